"""Two explanations of one image side by side (METHOD.md, "Comparing two explanations").

Each side (A, B) is a Fusion-CAM explanation: its own model, class and layer. A model sees the
box ``(left, top, right, bottom)`` of the original image that its geometry keeps (all of it for
a plain resize such as Lite0's; the centre for Lite1/Lite2's resize-then-crop), on its own
``H×W`` input grid. Resampling is bilinear with pixel centres ``(j + ½)`` mapped linearly from
one box onto the other (OpenCV's convention), values past a map's last centre held at the edge.

- Both fused maps are resampled onto the original image's grid; the **shared region** is the set
  of pixels both boxes contain (``shared_region`` = its share of the image's area). Each map is
  min–max normalised over that region, ``N(·)``, and
  **difference** ``= N(F_A) − N(F_B)`` in [−1, 1] there, 0 outside.
- **spearman**: the Pearson correlation of the two maps' average ranks over the shared region's
  pixels (0 when either map is constant there, never NaN).
- **iou_top20**: ``|T_A ∩ T_B| / |T_A ∪ T_B|``, ``T = {pixels ≥ the map's 80th percentile}``
  (numpy's linear percentile) over the shared region.
- **Average Drop** of one side (METHOD.md, one image): ``100 · max(0, Y − O) / Y`` with
  ``Y = p(x)_c`` and ``O = p(m(x, L))_c`` for that side's model, input ``x``, class ``c`` and
  baseline. ``average_drop_a`` uses ``L = F_A``; ``cross_average_drop_a`` uses ``L = F_B``
  resampled onto A's input grid, **0 where B never looked** (pixels of A's input outside B's
  box are replaced by A's baseline: B's map gives them no evidence). B likewise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backend import auto_chunk_size
from .baselines import apply_mask
from .capture import CaptureError
from .explain import Explanation, FusionParams, capture_evidence, derive, score_regions
from .images import Geometry, ImageSource, load_image
from .metrics import average_drop
from .models import LoadedModel

Box = tuple[int, int, int, int]   # (left, top, right, bottom) in the original image's pixels
SIDES = ("A", "B")
RECORD_KEYS = ("spearman", "iou_top20", "average_drop_a", "average_drop_b", "cross_average_drop_a",
               "cross_average_drop_b", "shared_region")
TOP_PERCENT = 20.0

#: One sentence per number of the record, in plain words (the CLI's page and the app show these).
EXPLANATIONS: dict[str, str] = {
    "spearman": "Rank correlation of the two Fusion-CAM maps over the part of the image both models saw: "
                "1 means they rank every pixel in the same order, 0 unrelated, −1 opposite.",
    "iou_top20": "Overlap of the two maps' top-20 % regions (intersection over union): 1 means both point "
                 "at exactly the same pixels, 0 at entirely different ones.",
    "average_drop_a": "How much side A's confidence in its class falls (in %) when A sees only what its own "
                      "map highlights: lower means A's map holds A's evidence.",
    "average_drop_b": "How much side B's confidence in its class falls (in %) when B sees only what its own "
                      "map highlights: lower means B's map holds B's evidence.",
    "cross_average_drop_a": "How much side A's confidence in its class falls (in %) when A sees only what B's "
                            "map highlights: close to A's own drop means B's evidence convinces A too.",
    "cross_average_drop_b": "How much side B's confidence in its class falls (in %) when B sees only what A's "
                            "map highlights: close to B's own drop means A's evidence convinces B too.",
    "shared_region": "Share of the image's area that both models saw (1 when both see the whole image); "
                     "the maps are compared there only.",
}


#: A short name for each number of the record.
LABELS: dict[str, str] = {
    "spearman": "Rank correlation (Spearman)", "iou_top20": "Top-20 % overlap (IoU)",
    "average_drop_a": "A's Average Drop, own map", "average_drop_b": "B's Average Drop, own map",
    "cross_average_drop_a": "A's Average Drop, B's map", "cross_average_drop_b": "B's Average Drop, A's map",
    "shared_region": "Region both models saw",
}


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` returns: ``difference`` (float32 on the original image's grid),
    the JSON-able ``record`` (:data:`RECORD_KEYS`), the two ``explanations``, the original
    ``image`` both maps are drawn on, the ``shared`` region (bool, same grid) and each side's ``boxes``."""

    difference: np.ndarray
    record: dict[str, float]
    explanations: tuple[Explanation, Explanation]
    image: Image.Image
    shared: np.ndarray
    boxes: tuple[Box, Box]

    def on_image(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Side ``index``'s (0: A, 1: B) Fusion-CAM map on the original image's grid (0 outside its
        box) and the bool mask of the pixels that side's model saw."""
        return _on_image(self.explanations[index].maps["fusion"], self.boxes[index], self.image)


def _axis(target: int, target_span: tuple[float, float], source: int,
          source_span: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, for each of ``target`` pixels covering ``target_span`` of the original
    image: the two source indices, the weight of the second, and whether its centre lies in
    ``source_span`` (the source's ``source`` pixels cover it)."""
    t0, t1 = target_span
    s0, s1 = source_span
    centres = t0 + (np.arange(target) + 0.5) * (t1 - t0) / target
    position = np.clip((centres - s0) * source / (s1 - s0) - 0.5, 0, source - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    return low, high, (position - low).astype(np.float32), (centres >= s0) & (centres < s1)


def resample(values: np.ndarray, source_box: Box, target_box: Box,
             target_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(resampled, inside)``: ``values`` (``h×w``, covering ``source_box`` of the original image)
    bilinearly on a ``target_shape = (H, W)`` grid covering ``target_box``, 0 where a pixel's centre
    lies outside ``source_box``, and that bool mask of pixels inside it."""
    values = np.asarray(values, dtype=np.float32)
    height, width = target_shape
    y0, y1, fy, in_y = _axis(height, (target_box[1], target_box[3]), values.shape[0], (source_box[1], source_box[3]))
    x0, x1, fx, in_x = _axis(width, (target_box[0], target_box[2]), values.shape[1], (source_box[0], source_box[2]))
    top = values[np.ix_(y0, x0)] * (1 - fx) + values[np.ix_(y0, x1)] * fx
    bottom = values[np.ix_(y1, x0)] * (1 - fx) + values[np.ix_(y1, x1)] * fx
    inside = in_y[:, None] & in_x[None, :]
    resampled = top * (1 - fy[:, None]) + bottom * fy[:, None]
    return np.where(inside, resampled, 0).astype(np.float32), inside


def _on_image(values: np.ndarray, box: Box, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """A map covering ``box`` of ``image`` resampled onto the image's grid, and its mask."""
    return resample(values, box, (0, 0, image.width, image.height), (image.height, image.width))


def normalize(values: np.ndarray) -> np.ndarray:
    """``N(M) = (M − min M) / max(M − min M)`` in float64; a constant ``M`` gives zeros."""
    shifted = np.asarray(values, dtype=np.float64) - np.min(values)
    peak = shifted.max()
    return shifted / peak if peak > 0 else np.zeros_like(shifted)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0…n−1 of a flat array, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((2 * ends - counts - 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two equally long value sets: Pearson's r of their average ranks, 0 when
    either is constant."""
    ranks_a, ranks_b = (average_ranks(np.ravel(v)) for v in (a, b))
    ranks_a -= ranks_a.mean()
    ranks_b -= ranks_b.mean()
    scale = np.sqrt((ranks_a @ ranks_a) * (ranks_b @ ranks_b))
    return float(np.clip(ranks_a @ ranks_b / scale, -1, 1)) if scale > 0 else 0.0


def iou_top(a: np.ndarray, b: np.ndarray, percent: float = TOP_PERCENT) -> float:
    """IoU of ``{a ≥ percentile(a, 100 − percent)}`` and the same set of ``b`` (numpy's linear
    percentile): both sets always hold at least the maximum, so the union is never empty."""
    top_a = a >= np.percentile(a, 100 - percent)
    top_b = b >= np.percentile(b, 100 - percent)
    return float(np.count_nonzero(top_a & top_b) / np.count_nonzero(top_a | top_b))


@contextmanager
def side(name: str) -> Iterator[None]:
    """Bad input raised inside says which side it is about: ``side B: class 5000 is out of range …``
    (same exception type, one sentence)."""
    try:
        yield
    except (ValueError, CaptureError) as error:
        message = str(error)
        raise type(error)(message if message.startswith("side ") else f"side {name}: {message}") from None


def _geometries(model: LoadedModel) -> list[Geometry]:
    """The geometries an explanation of ``model`` may have used: its own, and for a plain resize
    also the centre crop that ``explain(..., crop=True)`` asks for (:meth:`LoadedModel.preprocess`)."""
    geometry = model.geometry
    if geometry == Geometry("squash", None, geometry.interpolation):
        return [geometry, Geometry.centre_crop(model.input_size, interpolation=geometry.interpolation)]
    return [geometry]


def seen_box(explanation: Explanation, image: Image.Image) -> Box:
    """The box of ``image`` that ``explanation``'s model saw (its ``explanation.image``); a
    ``ValueError`` when the explanation was not made from ``image``."""
    seen = explanation.image
    for geometry in _geometries(explanation.model):
        box = geometry.fit(image, explanation.model.input_size)[1]
        if (box[2] - box[0], box[3] - box[1]) == seen.size and (
                seen is image or np.array_equal(np.asarray(image.crop(box)), np.asarray(seen))):
            return box
    raise ValueError(f"this explanation (of a {seen.width}×{seen.height} px view) was not made from this "
                     f"{image.width}×{image.height} px image")


def _original(explanations: tuple[Explanation, Explanation], image: ImageSource | None) -> tuple[Image.Image, Box, Box]:
    """The original image and each side's box in it."""
    if image is not None:
        original = load_image(image)
        boxes = []
        for name, explanation in zip(SIDES, explanations, strict=True):
            with side(name):
                boxes.append(seen_box(explanation, original))
        return original, boxes[0], boxes[1]
    seen_a, seen_b = (explanation.image for explanation in explanations)
    if seen_a is not seen_b and (seen_a.size != seen_b.size or not np.array_equal(np.asarray(seen_a),
                                                                                     np.asarray(seen_b))):
        raise ValueError("the two explanations saw different parts of the image (or different images): "
                         "pass the original image as compare(a, b, image=...)")
    whole = (0, 0, *seen_a.size)
    return seen_a, whole, whole


def _masked_probabilities(explanation: Explanation, masks: list[np.ndarray], pad_to: int | None) -> list[float]:
    """``p(m(x, M))_c`` for each mask ``M`` on the explanation's input grid, in one batched pass,
    padded (once a compiled graph is ready) to ``pad_to`` rows, by default Score-CAM's chunk for
    this model, so the pass reuses Score-CAM's compiled graph instead of compiling another."""
    evidence, model = explanation.evidence, explanation.model
    device = model.device
    if pad_to is None:
        pad_to = auto_chunk_size(device, tuple(evidence.x.shape), model)
    x = evidence.x.to(device)[None]
    xb = evidence.baseline.to(device)[None]
    batch = apply_mask(x, xb, torch.from_numpy(np.stack(masks)).to(device))
    with torch.inference_mode():
        probabilities = torch.softmax(model.score(batch, pad_to).float(), dim=1)[:, evidence.target]
    return probabilities.cpu().tolist()


def compare(exp_a: Explanation, exp_b: Explanation, *, image: ImageSource | None = None,
            pad_to: int | None = None) -> Comparison:
    """Compare two explanations of one image (see the module docstring for every formula).

    ``image`` is the original image both were made from; it is needed when the two models saw
    different parts of it (a crop geometry on one side only, or two different crops). Without
    it both explanations must show the same view, which then stands for the image
    (``shared_region`` 1). Runs four forward passes, two per side in one batch each (own and
    cross Average Drop); ``pad_to`` (default: each model's Score-CAM chunk) pads those batches
    for the compiled scoring graph.
    """
    explanations = (exp_a, exp_b)
    original, box_a, box_b = _original(explanations, image)
    (on_a, inside_a), (on_b, inside_b) = (_on_image(e.maps["fusion"], box, original)
                                          for e, box in ((exp_a, box_a), (exp_b, box_b)))
    shared = inside_a & inside_b
    values_a, values_b = normalize(on_a[shared]), normalize(on_b[shared])
    difference = np.zeros(shared.shape, dtype=np.float32)
    difference[shared] = (values_a - values_b).astype(np.float32)

    drops = {}
    for name, own, other, own_box, other_box in (("a", exp_a, exp_b, box_a, box_b), ("b", exp_b, exp_a, box_b, box_a)):
        cross = resample(other.maps["fusion"], other_box, own_box, own.maps["fusion"].shape)[0]
        probability = float(torch.softmax(own.evidence.logits.float(), dim=0)[own.evidence.target])
        own_p, cross_p = _masked_probabilities(own, [own.maps["fusion"], cross], pad_to)
        drops[f"average_drop_{name}"] = average_drop([probability], [own_p])
        drops[f"cross_average_drop_{name}"] = average_drop([probability], [cross_p])
    record = {"spearman": spearman(values_a, values_b), "iou_top20": iou_top(values_a, values_b), **drops,
              "shared_region": float(shared.mean())}
    return Comparison(difference, {key: record[key] for key in RECORD_KEYS}, explanations, original, shared,
                      (box_a, box_b))


def default_classes(model_a: LoadedModel, model_b: LoadedModel, logits_a: torch.Tensor,
                    logits_b: torch.Tensor | None = None, class_a: int | None = None) -> tuple[int, int]:
    """``(class_a, class_b)`` when the user chose none: A's is model A's top-1 (or the given
    ``class_a``); B's is model B's top-1 when the models differ (``logits_b`` needed), else the
    one model's most probable class other than class A — its second most probable for the
    defaults, so comparing two classes is one click. Models are the same when they are one
    object or share a name."""
    order_a = torch.argsort(logits_a.float(), descending=True).tolist()
    chosen_a = order_a[0] if class_a is None else int(class_a)
    if model_a is not model_b and model_a.name != model_b.name:
        if logits_b is None:
            raise ValueError("model B's class defaults to its own top-1: its logits are needed")
        return chosen_a, int(torch.argmax(logits_b.float()))
    return chosen_a, next(index for index in order_a if index != chosen_a)


def explain_pair(image: ImageSource, model_a: LoadedModel, model_b: LoadedModel, class_a: int | None = None,
                 class_b: int | None = None, layer_a: str | None = None, layer_b: str | None = None,
                 theta: float = 10.0, strength: float = 1.0, weights: str = "reference",
                 **options: Any) -> tuple[Explanation, Explanation]:
    """Both sides' explanations of one image with one set of fusion parameters (one λ for both,
    so the comparison is fair); classes left ``None`` follow :func:`default_classes`.

    Both sides' stage 1 (one forward + backward each) runs before any Score-CAM pass, so a bad
    class or layer on either side fails fast, its message naming the side. ``options`` are
    :func:`~fusioncam.explain.explain`'s ``baseline``, ``gradient_method``, ``region_method``,
    ``top_k``, ``crop`` (both sides).
    """
    params = FusionParams(float(theta), float(strength), weights,
                          options.pop("gradient_method", "gradcam")).validated()
    region = {key: options.pop(key) for key in ("region_method", "top_k") if key in options}
    picture = load_image(image)
    with side("A"):
        first_a = capture_evidence(model_a, [picture], class_a, layer_a, **options)[0]
    if class_b is None and (model_a is model_b or model_a.name == model_b.name):
        class_b = default_classes(model_a, model_b, first_a.logits, class_a=first_a.target)[1]
    with side("B"):
        first_b = capture_evidence(model_b, [picture], class_b, layer_b, **options)[0]
    explanations = []
    for name, model, first in (("A", model_a, first_a), ("B", model_b, first_b)):
        with side(name):
            explanations.append(derive(model, score_regions(model, [first], **region), params)[0])
    return explanations[0], explanations[1]


def format_value(key: str, value: float) -> str:
    """A record value as shown to people: Average Drops and the shared region in %, the
    correlation and the overlap to three decimals."""
    if "drop" in key:
        return f"{value:.2f} %"
    if key == "shared_region":
        return f"{100 * value:.1f} %"
    return f"{value:.3f}"
