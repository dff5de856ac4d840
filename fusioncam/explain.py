"""Orchestration: gather the expensive evidence once, derive every Fusion-CAM map from it.

Three stages, each a function from immutable records to new records (data flows one way):

1. :func:`capture_evidence` → :class:`GradientEvidence` (one forward + backward: ``A``, ``G``,
   the logits; the gradient maps follow without the network);
2. :func:`score_regions` → :class:`RegionEvidence` (the Score-CAM masked passes);
3. :func:`derive` → :class:`Explanation` (every map and weight; at most four scoring passes).

Nothing is mutated in place, so a record can cross into a forked GPU worker and back, and a
late stage of an old request cannot change a newer one. The kept evidence makes
:meth:`Explanation.refuse` cheap: a new fusion strength or weight mode runs no network, a new
θ (or gradient method) at most two batch-1 forwards (the denoised and combined maps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import fusion
from .backend import auto_chunk_size, check_chunk, check_precision, math_mode, to_device
from .baselines import BASELINES, apply_mask, make_baseline
from .capture import capture_layer
from .gradient import GRADIENT_METHODS, gradient_map
from .images import ImageSource, load_image
from .models import LoadedModel, ModelError
from .ordering import channel_priority
from .region import RegionScores, iter_channel_scores, region_map, top_k_channels

MAP_NAMES = ("gradcam", "denoised", "scorecam", "combined", "fusion", "agreement")
REGION_METHODS = ("scorecam", "scorecam-topk")
DEFAULT_TOP_K = 128
REGION_KEY = ("region",)   # what decides L_reg's probability, once the region evidence is fixed


@dataclass(frozen=True)
class GradientEvidence:
    """Stage 1's record for one (image, model, layer, class, baseline): one forward + backward.

    Immutable; tensors live on the CPU so the record survives outside any GPU context and can
    be pickled into (and out of) a forked ZeroGPU worker. ``image`` is the part of the input
    image the model saw, over which every map is drawn. The gradient maps are derived on demand
    (``gradient_map``), memoised per method.
    """

    image: Image.Image
    x: torch.Tensor                 # 3×H×W, normalised
    baseline: torch.Tensor          # 3×H×W, x_b
    activations: torch.Tensor       # K×h×w
    gradients: torch.Tensor         # K×h×w
    logits: torch.Tensor            # C
    target: int
    layer: str
    baseline_kind: str
    timings: Mapping[str, float]
    _gradient_maps: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def gradient_map(self, method: str) -> torch.Tensor:
        """``L_grad`` for ``method`` (a pure function of ``(A, G)``, memoised): no network."""
        if method not in self._gradient_maps:
            size = tuple(self.x.shape[-2:])
            self._gradient_maps[method] = gradient_map(method, self.activations[None], self.gradients[None], size)[0]
        return self._gradient_maps[method]

    def top_predictions(self, class_names: list[str], k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` most probable classes, most probable first, as the report's ``top5`` entries
        ``{"index", "name", "probability"}``."""
        top = torch.softmax(self.logits.float(), dim=0).topk(min(k, len(self.logits)))
        return [{"index": index, "name": class_names[index], "probability": probability}
                for index, probability in zip(top.indices.tolist(), top.values.tolist(), strict=True)]


@dataclass(frozen=True)
class RegionEvidence:
    """Stage 2's record: the gradient evidence plus the Score-CAM channel scores.

    ``probabilities`` holds ``p(m(x, M))_c`` for the derived maps scored so far (keyed by what
    decides the map); :func:`derive` never changes a record, it returns one with more entries
    (:attr:`Explanation.evidence`), so re-fusion reruns nothing it has seen.
    """

    gradient: GradientEvidence
    region_method: str
    top_k: int | None
    region_scores: torch.Tensor          # K (−inf for channels top-k left out)
    baseline_probability: float          # p_b = p(x_b)_c
    masked_passes: int
    flat_channels: int
    scorecam_s: float
    probabilities: Mapping[tuple, float] = field(default_factory=dict)
    scoring_passes: int = 0
    scored_fraction: float = 1.0         # share of the masked passes made: < 1 is a partial (anytime) record
    warnings: tuple[str, ...] = ()
    _region: list[torch.Tensor] = field(default_factory=list, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        """Stage 1's read-only attributes (``x``, ``target``, ``image``, …) and methods."""
        if name.startswith("_") or name == "gradient":
            raise AttributeError(name)
        return getattr(self.gradient, name)

    @property
    def timings(self) -> dict[str, float]:
        return {**self.gradient.timings, "scorecam_s": self.scorecam_s}

    def region_map(self) -> torch.Tensor:
        """``L_reg`` from the kept channel scores (memoised)."""
        if not self._region:
            size = tuple(self.x.shape[-2:])
            self._region.append(region_map(self.activations[None], self.region_scores[None], size)[0])
        return self._region[0]

    @property
    def final(self) -> bool:
        """Whether every masked pass has been made (the exact Score-CAM scores)."""
        return self.scored_fraction >= 1.0

    def with_probabilities(self, scored: Mapping[tuple, float]) -> RegionEvidence:
        """A copy that also knows the probabilities in ``scored`` (each one new scoring pass)."""
        fresh = {key: value for key, value in scored.items() if key not in self.probabilities}
        if not fresh:
            return self
        return replace(self, probabilities={**self.probabilities, **fresh},
                       scoring_passes=self.scoring_passes + len(fresh), _region=self._region)


@dataclass(frozen=True)
class FusionParams:
    """The cheap knobs: everything :meth:`Explanation.refuse` may change."""

    theta: float = 10.0
    strength: float = 1.0
    weights: str = "reference"
    gradient_method: str = "gradcam"

    def validated(self) -> FusionParams:
        fusion.check_weights_mode(self.weights)
        if self.gradient_method not in GRADIENT_METHODS:
            raise ValueError(f"unknown gradient method {self.gradient_method!r}; choose one of "
                             f"{', '.join(GRADIENT_METHODS)}")
        if not 0 <= self.theta <= 100:
            raise ValueError(f"theta must be a percentile in [0, 100], got {self.theta}")
        if not np.isfinite(self.strength) or self.strength < 0:
            raise ValueError(f"fusion strength must be a finite number ≥ 0, got {self.strength}")
        return self


class Explanation:
    """One image's Fusion-CAM explanation: ``maps`` (float32 H×W arrays in [0, 1]) and ``report``."""

    def __init__(self, model: LoadedModel, evidence: RegionEvidence, params: FusionParams,
                 maps: dict[str, np.ndarray], report: dict[str, Any]) -> None:
        self.model = model
        self.evidence = evidence
        self.params = params
        self.maps = maps
        self.report = report

    @property
    def image(self) -> Image.Image:
        """The display image (RGB, original aspect), for overlays."""
        return self.evidence.image

    def refuse(self, theta: float | None = None, strength: float | None = None, weights: str | None = None,
               gradient_method: str | None = None) -> Explanation:
        """A new explanation from the kept evidence with some fusion parameters changed."""
        params = FusionParams(
            theta=self.params.theta if theta is None else float(theta),
            strength=self.params.strength if strength is None else float(strength),
            weights=self.params.weights if weights is None else weights,
            gradient_method=self.params.gradient_method if gradient_method is None else gradient_method,
        ).validated()
        return derive(self.model, [self.evidence], params)[0]

    def __repr__(self) -> str:
        return (f"Explanation(model={self.model.name!r}, layer={self.evidence.layer!r}, "
                f"class={self.evidence.target} {self.report['class_name']!r}, {self.params})")


def _probabilities(model: LoadedModel, evidences: list[RegionEvidence], requests: list[tuple[int, tuple, torch.Tensor]],
                   chunk_size: int) -> list[RegionEvidence]:
    """The evidences, each knowing ``p(m(x, M))_c`` for its ``(evidence index, key, M)`` requests;
    those not known yet are computed in batched forward passes."""
    todo = [(i, key, mask) for i, key, mask in requests if key not in evidences[i].probabilities]
    scored: list[dict[tuple, float]] = [{} for _ in evidences]
    device = model.device
    rows = scoring_rows(len(todo), chunk_size)
    for start in range(0, len(todo), rows):
        part = todo[start:start + rows]
        x = torch.stack([evidences[i].x for i, _, _ in part]).to(device)
        xb = torch.stack([evidences[i].baseline for i, _, _ in part]).to(device)
        masks = torch.stack([mask for _, _, mask in part]).to(device)
        targets = torch.tensor([evidences[i].target for i, _, _ in part], device=device)
        with torch.inference_mode():
            probs = torch.softmax(model.score(apply_mask(x, xb, masks), pad_to=rows).float(), dim=1)
            chosen = probs.gather(1, targets[:, None]).squeeze(1).cpu().tolist()
        for (i, key, _), value in zip(part, chosen, strict=True):
            scored[i][key] = value
    return [e.with_probabilities(new) for e, new in zip(evidences, scored, strict=True)]


def scoring_rows(count: int, chunk_size: int) -> int:
    """The batch size of :func:`derive`'s scoring passes for ``count`` masked inputs: the power of
    two ≥ ``count``, at most ``chunk_size``'s, so these passes use one of a few fixed input shapes
    (1, 2, 4, …; warmed up at load on a GPU, :meth:`~fusioncam.models.LoadedModel.warm_up_shapes`)."""
    cap = 1 << max(chunk_size, 1).bit_length() - 1
    return min(cap, 1 << max(count - 1, 0).bit_length())


def _denoised_key(params: FusionParams) -> tuple:
    """What decides ``L_den``: the gradient method and θ."""
    return ("denoised", params.gradient_method, params.theta)


def _combined_key(params: FusionParams, beta_den: float, beta_reg: float, hat: tuple[float, float]) -> tuple:
    """What decides ``L_comb``. ``N(·)`` ignores a positive scale, so every weight mode whose β̂
    are the raw β times a positive number yields the same map: the key holds only the sign of
    that scale."""
    return ("combined", params.gradient_method, params.theta,
            math.copysign(1.0, hat[0] * beta_den + hat[1] * beta_reg))


def needs_scoring(evidence: RegionEvidence, params: FusionParams) -> bool:
    """Whether :func:`derive` would run the network for ``params``: a θ or gradient method not
    scored yet, or a weight mode that flips the combined map's sign; a new λ never does."""
    scored = evidence.probabilities
    den_key = _denoised_key(params)
    if den_key not in scored or REGION_KEY not in scored:
        return True
    beta_den = scored[den_key] - evidence.baseline_probability
    beta_reg = scored[REGION_KEY] - evidence.baseline_probability
    hat = fusion.contribution_weights(beta_den, beta_reg, params.weights)
    return _combined_key(params, beta_den, beta_reg, hat) not in scored


def derive(model: LoadedModel, evidences: list[RegionEvidence], params: FusionParams,
           chunk_size: int = 16) -> list[Explanation]:
    """Every map and weight of METHOD.md §1–4 from kept evidence; network only for unseen maps.

    Changes no record: each explanation carries a copy of its evidence that also knows the
    probabilities scored here.
    """
    started = time.perf_counter()
    grads = [e.gradient_map(params.gradient_method) for e in evidences]
    regions = [e.region_map() for e in evidences]
    denoised = [fusion.denoise(g, params.theta) for g in grads]
    den_key, reg_key = _denoised_key(params), REGION_KEY
    evidences = _probabilities(model, evidences, [(i, den_key, den) for i, (den, _) in enumerate(denoised)]
                               + [(i, reg_key, reg) for i, reg in enumerate(regions)], chunk_size)
    combined, hats, comb_keys = [], [], []
    for e, (den, _), reg in zip(evidences, denoised, regions, strict=True):
        beta_den = e.probabilities[den_key] - e.baseline_probability
        beta_reg = e.probabilities[reg_key] - e.baseline_probability
        hat = fusion.contribution_weights(beta_den, beta_reg, params.weights)
        hats.append((beta_den, beta_reg, *hat))
        combined.append(fusion.combine(den, reg, *hat))
        comb_keys.append(_combined_key(params, beta_den, beta_reg, hat))
    evidences = _probabilities(model, evidences, [(i, key, comb) for i, (key, comb) in enumerate(
        zip(comb_keys, combined, strict=True))], chunk_size)

    explanations = []
    rows = zip(evidences, grads, denoised, regions, combined, hats, comb_keys, strict=True)
    for e, grad, (den, zeroed), reg, comb, hat, comb_key in rows:
        beta_den, beta_reg, den_hat, reg_hat = hat
        beta_comb = e.probabilities[comb_key] - e.baseline_probability
        gamma_comb, gamma_reg = fusion.fusion_weights(beta_comb, beta_reg, reg_hat, params.weights)
        fused, agree = fusion.fuse(comb, reg, gamma_comb, gamma_reg, params.strength)
        weights = fusion.Weights(beta_den, beta_reg, beta_comb, den_hat, reg_hat, gamma_comb, gamma_reg)
        maps = {name: tensor.detach().float().cpu().numpy().astype(np.float32, copy=False)
                for name, tensor in zip(MAP_NAMES, (grad, den, reg, comb, fused, agree), strict=True)}
        report = _report(model, e, params, weights, int(zeroed), started)
        explanations.append(Explanation(model, e, params, maps, report))
    return explanations


def _report(model: LoadedModel, e: RegionEvidence, params: FusionParams, weights: fusion.Weights, zeroed: int,
            started: float) -> dict[str, Any]:
    """The JSON-able summary of one explanation."""
    probability = float(torch.softmax(e.logits.float(), dim=0)[e.target])
    pixels = int(e.x.shape[-1] * e.x.shape[-2])
    warnings = [*e.warnings, *fusion.weight_warnings(weights, params.weights)]
    if zeroed == 0 and params.theta > 0:
        warnings.append(f"Denoising at θ = {params.theta:g} changed nothing: more than {params.theta:g} % "
                        "of the Grad-CAM pixels are already zero.")
    timings = {**e.timings, "fusion_s": time.perf_counter() - started}
    return {
        "model": model.name,
        "layer": e.layer,
        "class_index": e.target,
        "class_name": model.class_names[e.target],
        "probability": probability,
        "top5": e.top_predictions(model.class_names),
        "params": {"theta": params.theta, "strength": params.strength, "weights": params.weights,
                   "baseline": e.baseline_kind, "gradient_method": params.gradient_method,
                   "region_method": e.region_method, "top_k": e.top_k},
        "betas": {"denoised": weights.beta_den, "region": weights.beta_reg, "combined": weights.beta_comb,
                  "denoised_hat": weights.beta_den_hat, "region_hat": weights.beta_reg_hat,
                  "baseline_probability": e.baseline_probability},
        "gammas": {"combined": weights.gamma_comb, "region": weights.gamma_reg},
        "denoise": {"theta": params.theta, "zeroed_pixels": zeroed, "zeroed_fraction": zeroed / pixels},
        "channels": {"total": int(e.activations.shape[0]), "flat": e.flat_channels},
        "warnings": warnings,
        "forward_passes": {"gradient": 1, "baseline": 1, "masked": e.masked_passes,
                           "scoring": e.scoring_passes,
                           "total": 2 + e.masked_passes + e.scoring_passes},
        "timings": {name: round(seconds, 4) for name, seconds in timings.items()},
        "device": str(model.device),
        "progress": {"scorecam_fraction": e.scored_fraction, "final": e.final},
    }


def _targets(target: int | list[int | None] | None, count: int, logits: torch.Tensor,
             num_classes: int) -> list[int]:
    """One class index per image (``None`` → that image's top-1), range-checked."""
    targets = [target] * count if target is None or isinstance(target, (int, np.integer)) else list(target)
    if len(targets) != count:
        raise ValueError(f"{count} images need {count} targets, got {len(targets)}")
    top1 = logits.argmax(1).tolist()
    targets = [top1[i] if t is None else t for i, t in enumerate(targets)]
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < num_classes:
            raise ModelError(f"class {t!r} is out of range: this model has classes 0–{num_classes - 1}")
    return [int(t) for t in targets]


def capture_evidence(model: LoadedModel, images: list[Image.Image], target: int | list[int | None] | None = None,
                     layer: str | None = None, baseline: str = "mean", crop: bool = False) -> list[GradientEvidence]:
    """Stage 1, one forward + backward: logits, ``A`` and ``G`` at the layer, and the baseline.

    The returned records already yield the gradient maps (:func:`gradient_preview`); pass them
    to :func:`score_regions`, then :func:`derive`. Safe to call from several threads on one
    model at once: the capture acts on this call's forward only.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    layer_name, layer_module = model.resolve_layer(layer)
    device = model.device
    prepared = [model.preprocess(image, crop) for image in images]
    x = torch.stack([inputs for inputs, _ in prepared]).to(device)
    xb = make_baseline(x, baseline, model.mean, model.std)
    started = time.perf_counter()
    with math_mode("fp32"), capture_layer(model.module, layer_module) as record:
        logits = model(x).float()
        targets = _targets(target, len(images), logits, model.num_classes)
        score = logits.gather(1, torch.tensor(targets, device=device)[:, None]).sum()
        gradients = record.gradient(score)
        activations = record.activation.detach()
    seconds = (time.perf_counter() - started) / len(images)
    x, xb, activations, gradients, logits = (t.detach().float().cpu() for t in (x, xb, activations, gradients, logits))
    return [GradientEvidence(image=prepared[i][1], x=x[i], baseline=xb[i], activations=activations[i],
                             gradients=gradients[i], logits=logits[i], target=targets[i], layer=layer_name,
                             baseline_kind=baseline, timings={"gradient_s": seconds})
            for i in range(len(images))]


def iter_regions(model: LoadedModel, evidences: list[GradientEvidence], region_method: str = "scorecam",
                 top_k: int | None = None, chunk_size: int | None = None, share_flat: bool = True,
                 precision: str = "fp32", stops: tuple[float, ...] = (),
                 turn: Callable[[], AbstractContextManager] | None = None) -> Iterator[list[RegionEvidence]]:
    """Stage 2, anytime: the Score-CAM masked passes for every record at once, yielding after each
    chunk one record per image with the channel scores known so far; the last yield is exact.

    Channels are scored by :func:`~fusioncam.ordering.channel_priority` (the most telling first), and
    a partial record is METHOD.md's partial Score-CAM: channels not scored yet get ``α = 0``; its
    ``scored_fraction`` says how far it is (1 on the last). ``stops`` are fractions of the passes at
    which a result is yielded however large the chunk; ``turn`` shares the network with other
    requests (:func:`~fusioncam.region.iter_channel_scores`). ``region_method="scorecam-topk"``
    scores only the ``top_k`` channels with the largest Grad-CAM weights (default 128);
    ``precision`` other than ``fp32`` is an opt-in approximation (``tf32``, ``bf16``, ``fp16``).
    """
    if region_method not in REGION_METHODS:
        raise ValueError(f"unknown region method {region_method!r}; choose one of {', '.join(REGION_METHODS)}")
    if region_method != "scorecam-topk":
        top_k = None
    elif top_k is None or top_k < 1:
        top_k = DEFAULT_TOP_K
    device = model.device
    check_precision(precision, device)
    x = to_device(torch.stack([e.x for e in evidences]), device)
    xb = to_device(torch.stack([e.baseline for e in evidences]), device)
    activations = torch.stack([e.activations for e in evidences])
    gradients = torch.stack([e.gradients for e in evidences])
    targets = torch.tensor([e.target for e in evidences], device=device)
    selected = top_k_channels(gradients.mean(dim=(-2, -1)), top_k) if top_k is not None else None
    chunk = check_chunk(chunk_size, device, tuple(x.shape[1:]), model, precision) if chunk_size else \
        auto_chunk_size(device, tuple(x.shape[1:]), model, precision)
    started = time.perf_counter()
    partials = iter_channel_scores(model, x, xb, to_device(activations, device), targets, chunk, selected, share_flat,
                                   precision=precision, priority=channel_priority(activations, gradients),
                                   stops=stops, turn=turn)
    for region in partials:
        yield _region_records(evidences, region, targets, region_method, top_k,
                              (time.perf_counter() - started) / len(evidences))


def _region_records(evidences: list[GradientEvidence], region: RegionScores, targets: torch.Tensor,
                    region_method: str, top_k: int | None, seconds: float) -> list[RegionEvidence]:
    """One :class:`RegionEvidence` per image from (possibly partial) channel scores."""
    base_probs = torch.softmax(region.baseline_logits, dim=1).gather(1, targets[:, None]).squeeze(1).cpu()
    scores, masked, flat = region.scores.cpu(), region.masked_passes.tolist(), region.flat_channels.tolist()
    return [RegionEvidence(gradient=e, region_method=region_method, top_k=top_k, region_scores=scores[i].clone(),
                           baseline_probability=float(base_probs[i]), masked_passes=int(masked[i]),
                           flat_channels=int(flat[i]), scorecam_s=seconds, scored_fraction=region.fraction,
                           warnings=region.warnings)
            for i, e in enumerate(evidences)]


def score_regions(model: LoadedModel, evidences: list[GradientEvidence], region_method: str = "scorecam",
                  top_k: int | None = None, chunk_size: int | None = None, share_flat: bool = True,
                  progress: Callable[[int, int], None] | None = None, precision: str = "fp32",
                  turn: Callable[[], AbstractContextManager] | None = None) -> list[RegionEvidence]:
    """Stage 2 run to the end (:func:`iter_regions`): one exact record per image;
    ``progress(done, total)`` is called after each chunk with the masked passes made and due."""
    for records in iter_regions(model, evidences, region_method, top_k, chunk_size, share_flat, precision,
                                turn=turn):
        if progress is not None:
            first = records[0]
            total = sum(r.masked_passes for r in records) / max(first.scored_fraction, 1e-12)
            progress(sum(r.masked_passes for r in records), round(total))
    return records


def gradient_preview(evidence: GradientEvidence, theta: float = 10.0, method: str = "gradcam") -> dict[str, np.ndarray]:
    """The maps available right after stage 1: ``gradcam`` and ``denoised`` (no network)."""
    grad = evidence.gradient_map(method)
    return {"gradcam": grad.numpy(), "denoised": fusion.denoise(grad, theta)[0].numpy()}


def explain(model: LoadedModel, image: ImageSource | list[ImageSource], target: int | list[int | None] | None = None,
            layer: str | None = None, theta: float = 10, strength: float = 1.0, weights: str = "reference",
            baseline: str = "mean", gradient_method: str = "gradcam", region_method: str = "scorecam",
            top_k: int | None = None, chunk_size: int | None = None, crop: bool = False, precision: str = "fp32",
            ) -> Explanation | list[Explanation]:
    """Explain ``model``'s decision for ``target`` (default: the top-1 class) on ``image``.

    ``image`` is a path, bytes, PIL image or array — or a list of them, with one target each
    (or ``None``); a list returns a list of explanations equal to one-by-one runs.
    ``precision`` other than ``fp32`` speeds up the Score-CAM passes under autocast, approximately.
    """
    params = FusionParams(float(theta), float(strength), weights, gradient_method).validated()
    check_precision(precision, model.device)
    if chunk_size is not None:
        check_chunk(chunk_size, model.device, (3, *model.input_size), model, precision)
    batch = isinstance(image, list)
    images = [load_image(source) for source in (image if batch else [image])]
    if not images:
        raise ValueError("no images to explain")
    evidences = capture_evidence(model, images, target, layer, baseline, crop)
    regions = score_regions(model, evidences, region_method, top_k, chunk_size, precision=precision)
    explanations = derive(model, regions, params, chunk_size or 16)
    return explanations if batch else explanations[0]
