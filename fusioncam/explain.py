"""Orchestration: gather the expensive evidence once, derive every Fusion-CAM map from it.

:func:`explain` runs one forward + backward (the gradient maps), the Score-CAM masked passes
and the fusion scoring passes; the :class:`Evidence` it keeps makes
:meth:`Explanation.refuse` cheap: a new fusion strength or weight mode runs no network, a
new θ (or gradient method) at most two batch-1 forwards (the denoised and combined maps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import fusion
from .baselines import BASELINES, apply_mask, make_baseline
from .capture import capture_layer
from .gradient import GRADIENT_METHODS, gradient_map
from .images import ImageSource, load_image, normalize_image, resize_for_model
from .models import LoadedModel, ModelError
from .region import region_map, score_channels, top_k_channels

MAP_NAMES = ("gradcam", "denoised", "scorecam", "combined", "fusion", "agreement")
REGION_METHODS = ("scorecam", "scorecam-topk")


@dataclass
class Evidence:
    """The expensive, parameter-free evidence for one (image, model, layer, class, baseline).

    Tensors live on the CPU so caches survive outside any GPU context. ``probabilities``
    caches ``p(m(x, M))_c`` per derived map key, so re-fusion reruns nothing it has seen.
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
    region_method: str
    top_k: int | None
    region_scores: torch.Tensor     # K (−inf for channels top-k left out)
    baseline_probability: float     # p_b = p(x_b)_c
    masked_passes: int
    flat_channels: int
    timings: dict[str, float]
    gradient_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    region: torch.Tensor | None = None
    probabilities: dict[tuple, float] = field(default_factory=dict)
    scoring_passes: int = 0

    def gradient_map(self, method: str) -> torch.Tensor:
        """``L_grad`` for ``method`` (cached): no network, only ``(A, G)``."""
        if method not in self.gradient_maps:
            size = tuple(self.x.shape[-2:])
            self.gradient_maps[method] = gradient_map(method, self.activations[None], self.gradients[None], size)[0]
        return self.gradient_maps[method]

    def region_map(self) -> torch.Tensor:
        """``L_reg`` from the kept channel scores (cached)."""
        if self.region is None:
            self.region = region_map(self.activations[None], self.region_scores[None], tuple(self.x.shape[-2:]))[0]
        return self.region


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

    def __init__(self, model: LoadedModel, evidence: Evidence, params: FusionParams,
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


def _probabilities(model: LoadedModel, evidences: list[Evidence], requests: list[tuple[int, tuple, torch.Tensor]],
                   chunk_size: int) -> None:
    """Fill ``evidence.probabilities[key] = p(m(x, M))_c`` for each ``(evidence index, key, M)``
    not cached yet, in batched forward passes."""
    todo = [(i, key, mask) for i, key, mask in requests if key not in evidences[i].probabilities]
    if not todo:
        return
    device = model.device
    for start in range(0, len(todo), chunk_size):
        part = todo[start:start + chunk_size]
        x = torch.stack([evidences[i].x for i, _, _ in part]).to(device)
        xb = torch.stack([evidences[i].baseline for i, _, _ in part]).to(device)
        masks = torch.stack([mask for _, _, mask in part]).to(device)
        targets = torch.tensor([evidences[i].target for i, _, _ in part], device=device)
        with torch.inference_mode():
            probs = torch.softmax(model(apply_mask(x, xb, masks)).float(), dim=1)
            chosen = probs.gather(1, targets[:, None]).squeeze(1).cpu().tolist()
        for (i, key, _), value in zip(part, chosen, strict=True):
            evidences[i].probabilities[key] = value
            evidences[i].scoring_passes += 1


def derive(model: LoadedModel, evidences: list[Evidence], params: FusionParams,
           chunk_size: int = 16) -> list[Explanation]:
    """Every map and weight of METHOD.md §1–4 from kept evidence; network only for unseen maps."""
    started = time.perf_counter()
    method, theta, mode = params.gradient_method, params.theta, params.weights
    grads = [e.gradient_map(method) for e in evidences]
    regions = [e.region_map() for e in evidences]
    denoised = [fusion.denoise(g, theta) for g in grads]
    den_key, reg_key = ("denoised", method, theta), ("region",)
    with model.lock:
        _probabilities(model, evidences, [(i, den_key, den) for i, (den, _) in enumerate(denoised)]
                       + [(i, reg_key, reg) for i, reg in enumerate(regions)], chunk_size)
    combined, hats = [], []
    for e, (den, _), reg in zip(evidences, denoised, regions, strict=True):
        beta_den = e.probabilities[den_key] - e.baseline_probability
        beta_reg = e.probabilities[reg_key] - e.baseline_probability
        hat = fusion.contribution_weights(beta_den, beta_reg, mode)
        hats.append((beta_den, beta_reg, *hat))
        combined.append(fusion.combine(den, reg, *hat))
    comb_key = ("combined", method, theta, mode != "raw")
    with model.lock:
        _probabilities(model, evidences, [(i, comb_key, comb) for i, comb in enumerate(combined)], chunk_size)

    explanations = []
    rows = zip(evidences, grads, denoised, regions, combined, hats, strict=True)
    for e, grad, (den, zeroed), reg, comb, hat in rows:
        beta_den, beta_reg, den_hat, reg_hat = hat
        beta_comb = e.probabilities[comb_key] - e.baseline_probability
        gamma_comb, gamma_reg = fusion.fusion_weights(beta_comb, beta_reg, reg_hat, mode)
        fused, agree = fusion.fuse(comb, reg, gamma_comb, gamma_reg, params.strength)
        weights = fusion.Weights(beta_den, beta_reg, beta_comb, den_hat, reg_hat, gamma_comb, gamma_reg)
        maps = {name: tensor.detach().float().cpu().numpy().astype(np.float32, copy=False)
                for name, tensor in zip(MAP_NAMES, (grad, den, reg, comb, fused, agree), strict=True)}
        report = _report(model, e, params, weights, int(zeroed), started)
        explanations.append(Explanation(model, e, params, maps, report))
    return explanations


def _report(model: LoadedModel, e: Evidence, params: FusionParams, weights: fusion.Weights, zeroed: int,
            started: float) -> dict[str, Any]:
    """The JSON-able summary of one explanation."""
    probs = torch.softmax(e.logits.float(), dim=0)
    top = probs.topk(min(5, len(probs)))
    pixels = int(e.x.shape[-1] * e.x.shape[-2])
    warnings = fusion.weight_warnings(weights)
    if zeroed == 0 and params.theta > 0:
        warnings.append(f"Denoising at θ = {params.theta:g} changed nothing: more than {params.theta:g} % "
                        "of the Grad-CAM pixels are already zero.")
    timings = dict(e.timings, fusion_s=time.perf_counter() - started)
    return {
        "model": model.name,
        "layer": e.layer,
        "class_index": e.target,
        "class_name": model.class_names[e.target],
        "probability": float(probs[e.target]),
        "top5": [{"index": int(i), "name": model.class_names[int(i)], "probability": float(p)}
                 for p, i in zip(top.values, top.indices, strict=True)],
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
    }


def _targets(target: int | list[int] | None, count: int, logits: torch.Tensor, num_classes: int) -> list[int]:
    """One class index per image (``None`` → each image's top-1), range-checked."""
    if target is None:
        return logits.argmax(1).tolist()
    targets = [target] * count if isinstance(target, (int, np.integer)) else list(target)
    if len(targets) != count:
        raise ValueError(f"{count} images need {count} targets, got {len(targets)}")
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < num_classes:
            raise ModelError(f"class {t!r} is out of range: this model has classes 0–{num_classes - 1}")
    return [int(t) for t in targets]


def gather_evidence(model: LoadedModel, images: list[Image.Image], target: int | list[int] | None = None,
                    layer: str | None = None, baseline: str = "mean", region_method: str = "scorecam",
                    top_k: int | None = None, chunk_size: int | None = None, crop: bool = False,
                    share_flat: bool = True) -> list[Evidence]:
    """The network part: one forward + backward for ``(A, G)`` and logits, then the Score-CAM passes."""
    from .backend import auto_chunk_size

    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if region_method not in REGION_METHODS:
        raise ValueError(f"unknown region method {region_method!r}; choose one of {', '.join(REGION_METHODS)}")
    if region_method == "scorecam-topk" and (top_k is None or top_k < 1):
        top_k = 128
    layer_name, layer_module = model.resolve_layer(layer)
    device = model.device
    x = torch.stack([normalize_image(resize_for_model(im, model.input_size, crop), model.mean, model.std)
                     for im in images]).to(device)
    xb = make_baseline(x, baseline, model.mean, model.std)

    with model.lock:
        started = time.perf_counter()
        with capture_layer(model.module, layer_module) as record:
            logits = model(x).float()
            targets = _targets(target, len(images), logits, model.num_classes)
            target_tensor = torch.tensor(targets, device=device)
            gradients = record.gradient(logits.gather(1, target_tensor[:, None]).sum())
            acts = record.activation.detach()
        gradient_s = time.perf_counter() - started

        started = time.perf_counter()
        selected = None
        if region_method == "scorecam-topk":
            weights = gradients.float().mean(dim=(-2, -1))
            selected = top_k_channels(weights, top_k)
        chunk = chunk_size or auto_chunk_size(device, tuple(x.shape[1:]))
        region = score_channels(model, x, xb, acts, target_tensor, chunk, selected, share_flat)
        base_probs = torch.softmax(region.baseline_logits, dim=1).gather(1, target_tensor[:, None]).squeeze(1)
        region_s = time.perf_counter() - started

    to_cpu = [t.detach().float().cpu() for t in (x, xb, acts, gradients, logits, region.scores)]
    x_cpu, xb_cpu, acts_cpu, grads_cpu, logits_cpu, scores_cpu = to_cpu
    base_list = base_probs.cpu().tolist()
    flat_list = region.flat_channels.cpu().tolist()
    masked_per_image = region.masked_passes.cpu().tolist()
    return [Evidence(image=images[i], x=x_cpu[i], baseline=xb_cpu[i], activations=acts_cpu[i],
                     gradients=grads_cpu[i], logits=logits_cpu[i], target=targets[i], layer=layer_name,
                     baseline_kind=baseline, region_method=region_method,
                     top_k=top_k if region_method == "scorecam-topk" else None,
                     region_scores=scores_cpu[i], baseline_probability=base_list[i],
                     masked_passes=masked_per_image[i], flat_channels=int(flat_list[i]),
                     timings={"gradient_s": gradient_s / len(images), "scorecam_s": region_s / len(images)})
            for i in range(len(images))]


def explain(model: LoadedModel, image: ImageSource | list[ImageSource], target: int | list[int] | None = None,
            layer: str | None = None, theta: float = 10, strength: float = 1.0, weights: str = "reference",
            baseline: str = "mean", gradient_method: str = "gradcam", region_method: str = "scorecam",
            top_k: int | None = None, chunk_size: int | None = None, crop: bool = False,
            ) -> Explanation | list[Explanation]:
    """Explain ``model``'s decision for ``target`` (default: the top-1 class) on ``image``.

    ``image`` is a path, bytes, PIL image or array — or a list of them, with one target each
    (or ``None``); a list returns a list of explanations equal to one-by-one runs.
    """
    params = FusionParams(float(theta), float(strength), weights, gradient_method).validated()
    batch = isinstance(image, list)
    images = [load_image(source) for source in (image if batch else [image])]
    if not images:
        raise ValueError("no images to explain")
    evidences = gather_evidence(model, images, target, layer, baseline, region_method, top_k, chunk_size, crop)
    explanations = derive(model, evidences, params, chunk_size or 16)
    return explanations if batch else explanations[0]
