"""The model-parameter randomisation test (Adebayo et al., NeurIPS 2018), METHOD.md "Sanity check".

An explanation that does not change when the model's weights are destroyed explains the image,
not the model. The learnable parameters are re-initialised in **steps**, from the top down:
step 1 is the classifier head, then each top-level block or stage in reverse forward order
(:func:`randomization_steps`). **Cascading** mode keeps every earlier step randomised,
**independent** mode randomises one step at a time. A step re-initialises each module with its
own ``reset_parameters()`` where it has one, any other parameter from ``N(0, 0.02²)``, under
the seed ``seed + step index`` (so both modes draw the same weights for a step). All of it
happens on a deep copy: the loaded model is never touched.

After each step the same image is explained for the **original** target class, and every
method's map ``M'`` is compared with its original ``M``:

- **Spearman** ``ρ = Pearson(rank(M), rank(M'))`` over the ``H·W`` pixels (ties get their
  average rank; a constant map shares no ranking: ``ρ = 0``);
- **SSIM** (Wang et al. 2004) of the two maps in [0, 1]: the mean over pixels of
  ``(2μ_aμ_b + C1)(2σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2))`` with Gaussian-weighted
  local statistics (11×11 window, σ = 1.5, reflected borders), ``C1 = 0.01²``, ``C2 = 0.03²``.

Cost per step: one forward + backward serves every gradient-family method at once (seconds for
the whole check); Score-CAM and Fusion-CAM rerun Score-CAM (``K_eff + 1`` masked forwards) and
Fusion-CAM its ≤ 4 scoring passes, so with them the check costs ``steps + 1`` Score-CAM runs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.stats import rankdata
from torch import nn

from .explain import FusionParams, GradientEvidence, capture_evidence, derive, score_regions
from .gradient import GRADIENT_METHODS
from .models import LoadedModel

MODES = ("cascading", "independent")
REGION_METHODS = ("scorecam", "fusion")                      # the methods that rerun Score-CAM at every step
METHODS = (*GRADIENT_METHODS, *REGION_METHODS)
MIN_STEPS = 8          # containers are opened (largest first) until there are at least this many steps
NORMAL_STD = 0.02      # the init of a parameter whose module has no reset_parameters()
PASS_BELOW = 0.5       # a map "fell" when its Spearman ρ with the original ends below this (SanityResult.passed)
SSIM_WINDOW, SSIM_SIGMA, SSIM_C1, SSIM_C2 = 11, 1.5, 0.01 ** 2, 0.03 ** 2

#: A map from stage-1 evidence alone (an extension point: tests add a map that ignores the model).
StageOneMethod = Callable[[GradientEvidence], torch.Tensor | np.ndarray]


def parse_methods(text: str) -> list[str]:
    """``"gradcam,scorecam,fusion"`` → known methods in order, without repeats; else one plain ``ValueError``."""
    methods = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown sanity-check method {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(METHODS)}")
    return methods


def spearman(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Spearman's ρ over pixels: the Pearson correlation of the average ranks; 0 if either map is constant."""
    ra = rankdata(np.asarray(a, dtype=np.float64).ravel())
    rb = rankdata(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / scale if scale > 0 else 0.0


def ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Structural similarity of two maps in [0, 1] (data range 1), the mean of the SSIM map."""
    x, y = (np.clip(np.asarray(m, dtype=np.float64), 0, 1) for m in (a, b))

    def local(m: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(m, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_x, mu_y = local(x), local(y)
    var_x, var_y = local(x * x) - mu_x ** 2, local(y * y) - mu_y ** 2
    cov = local(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return float(value.mean())


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _forward_order(model: LoadedModel) -> dict[str, int]:
    """``name → position`` of every submodule in the order its forward starts (one dummy forward);
    modules the forward never calls are left out."""
    order: dict[str, int] = {}
    named = [(name, module) for name, module in model.module.named_modules() if name]

    def hook(name: str) -> Callable[..., None]:
        def started(_module: nn.Module, _inputs: object) -> None:
            order.setdefault(name, len(order))
        return started

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in named]
    try:
        with torch.inference_mode():
            model.module(torch.zeros(1, 3, *model.input_size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    return order


def randomization_steps(model: LoadedModel) -> list[str]:
    """The module names randomised at each step, head first: the top-level children that hold
    parameters in reverse forward order; while there are fewer than :data:`MIN_STEPS`, the
    largest ``nn.Sequential``/``nn.ModuleList`` among them (never the head) is replaced by its
    children (e.g. EfficientNet's ``blocks`` by its 7 stages: 12 steps for the bundled model)."""
    order = _forward_order(model)
    root = model.module

    def ordered(names: list[str]) -> list[str]:
        return sorted((n for n in names if n in order and _has_parameters(root.get_submodule(n))),
                      key=order.__getitem__, reverse=True)

    steps = ordered([name for name, _ in root.named_children()])
    if not steps:
        raise ValueError(f"model {model.name!r} has no learnable parameters to randomise")

    def openable(name: str) -> bool:
        module = root.get_submodule(name)
        return isinstance(module, (nn.Sequential, nn.ModuleList)) and len(
            ordered([f"{name}.{child}" for child, _ in module.named_children()])) > 1

    while len(steps) < MIN_STEPS:
        candidates = [name for name in steps[1:] if openable(name)]
        if not candidates:
            break
        largest = max(candidates, key=lambda n: sum(p.numel() for p in root.get_submodule(n).parameters()))
        index = steps.index(largest)
        children = ordered([f"{largest}.{child}" for child, _ in root.get_submodule(largest).named_children()])
        steps[index:index + 1] = children
    return steps


def randomize(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of ``module`` under ``seed``: each submodule's own
    ``reset_parameters()`` where it has one (BatchNorm's also resets its running statistics),
    any parameter left over from ``N(0, NORMAL_STD²)``."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        covered: set[int] = set()
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in sub.parameters(recurse=False))
        for parameter in module.parameters():
            if id(parameter) not in covered:
                nn.init.normal_(parameter, std=NORMAL_STD)


def randomized_models(model: LoadedModel, steps: Sequence[str], mode: str = "cascading",
                      seed: int = 0) -> Iterator[tuple[str, LoadedModel]]:
    """``(step, model)`` after each step: one deep copy of ``model``, randomised step by step
    (``cascading``) or restored before each step (``independent``). ``model`` is never touched;
    the copy yielded is the same object each time (use it before asking for the next step)."""
    if mode not in MODES:
        raise ValueError(f"unknown randomisation mode {mode!r}; choose one of {', '.join(MODES)}")
    twin = LoadedModel.from_module(copy.deepcopy(model.module), name=f"{model.name} (randomised)",
                                   input_size=model.input_size, mean=model.mean, std=model.std,
                                   class_names=model.class_names, default_layer=model.default_layer)
    original = {key: value.clone() for key, value in twin.module.state_dict().items()} if mode == "independent" \
        else None
    for index, name in enumerate(steps):
        if original is not None and index:
            twin.module.load_state_dict(original)
        randomize(twin.module.get_submodule(name), seed + index)
        yield name, twin


@dataclass(frozen=True)
class SanityResult:
    """The check's outcome: per method the original map, one map per step, and the similarities."""

    model: str
    mode: str
    seed: int
    layer: str
    target: int
    steps: list[str]
    original: dict[str, np.ndarray]
    maps: dict[str, list[np.ndarray]]
    spearman: dict[str, list[float]]
    ssim: dict[str, list[float]]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """``{"methods": {name: {"steps", "spearman", "ssim"}}, ...}`` plus the settings."""
        return {"methods": {name: {"steps": list(self.steps), "spearman": self.spearman[name],
                                   "ssim": self.ssim[name]} for name in self.original},
                "model": self.model, "mode": self.mode, "seed": self.seed, "layer": self.layer,
                "target": self.target, "seconds": round(self.seconds, 3)}

    def judged_step(self, name: str) -> int:
        """The step (1-based) at which the check judges ``name``. Independent: the last (it is
        judged over all of them). Cascading: the last step whose map is not constant: a map that
        turns blank (ρ = 0 by definition) only once the randomised model no longer responds to the
        image is judged where it last showed something; 0 when it is blank from step 1 on."""
        if self.mode == "independent":
            return len(self.steps)
        shown = [i for i, m in enumerate(self.maps[name], start=1) if np.ptp(m) > 0]
        return shown[-1] if shown else 0

    def judged_rho(self, name: str) -> float | None:
        """The Spearman ρ the verdict on ``name`` reads: its mean over the steps (independent), or
        its value at :meth:`judged_step` (cascading); ``None`` for a map blank from step 1 on."""
        values = self.spearman[name]
        if self.mode == "independent":
            return float(np.mean(values))
        step = self.judged_step(name)
        return values[step - 1] if step else None

    def passed(self, name: str, threshold: float = PASS_BELOW) -> bool:
        """Whether ``name``'s map fell: :meth:`judged_rho` below ``threshold`` (a map blank from
        step 1 on fell at once)."""
        rho = self.judged_rho(name)
        return rho is None or rho < threshold


def stage_maps(model: LoadedModel, image: Image.Image, target: int | None, layer: str | None, baseline: str,
               methods: Sequence[str], params: FusionParams, extra: Mapping[str, StageOneMethod],
               progress: Callable[[int, int], None] | None = None) -> tuple[GradientEvidence, dict[str, np.ndarray]]:
    """One image's maps for ``methods`` (and ``extra``): one capture for every gradient method,
    one Score-CAM run shared by Score-CAM and Fusion-CAM when either is asked for."""
    [gradient] = capture_evidence(model, [image], target, layer, baseline)
    maps: dict[str, np.ndarray] = {}
    if set(REGION_METHODS) & set(methods):
        [region] = score_regions(model, [gradient], progress=progress)
        if "scorecam" in methods:
            maps["scorecam"] = region.region_map().numpy()
        if "fusion" in methods:
            [explanation] = derive(model, [region], params)
            maps["fusion"] = explanation.maps["fusion"]
    for name in methods:
        if name in GRADIENT_METHODS:
            maps[name] = gradient.gradient_map(name).numpy()
    for name, method in extra.items():
        value = method(gradient)
        maps[name] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return gradient, {name: maps[name] for name in (*methods, *extra)}


def sanity_check(model: LoadedModel, image: Image.Image, target: int | None = None, layer: str | None = None,
                 methods: Sequence[str] = ("gradcam",), mode: str = "cascading", baseline: str = "mean",
                 params: FusionParams | None = None, seed: int = 0, extra: Mapping[str, StageOneMethod] | None = None,
                 progress: Callable[[float, str], None] | None = None) -> SanityResult:
    """Randomise ``model``'s copy step by step (``mode``) and compare each method's map of ``image``
    for the original target class with its map before any randomisation.

    ``target=None`` is the top-1 class of the intact model, kept for every step. ``params`` are
    Fusion-CAM's (θ, λ, weight mode, gradient method). ``progress(fraction, text)`` follows the steps.
    """
    started = time.perf_counter()
    methods = list(dict.fromkeys(methods))
    if not methods and not extra:
        raise ValueError("no methods to check")
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown sanity-check method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if mode not in MODES:
        raise ValueError(f"unknown randomisation mode {mode!r}; choose one of {', '.join(MODES)}")
    params = (params or FusionParams()).validated()
    extra = dict(extra or {})
    steps = randomization_steps(model)
    total = len(steps) + 1

    def stage(index: int, label: str) -> Callable[[int, int], None]:
        def report(done: int, count: int) -> None:
            if progress is not None:
                progress((index + done / max(count, 1)) / total, label)
        return report

    stage(0, "the intact model")(0, 1)
    gradient, original = stage_maps(model, image, target, layer, baseline, methods, params, extra,
                                    stage(0, "the intact model"))
    target, layer = gradient.target, gradient.layer
    maps: dict[str, list[np.ndarray]] = {name: [] for name in original}
    for index, (name, randomised) in enumerate(randomized_models(model, steps, mode, seed), start=1):
        report = stage(index, f"step {index}/{len(steps)}: {name} randomised")
        report(0, 1)
        _, step_maps = stage_maps(randomised, image, target, layer, baseline, methods, params, extra, report)
        for method, value in step_maps.items():
            maps[method].append(value)
    if progress is not None:
        progress(1.0, "done")
    return SanityResult(
        model=model.name, mode=mode, seed=seed, layer=layer, target=target, steps=steps, original=original, maps=maps,
        spearman={m: [spearman(original[m], v) for v in values] for m, values in maps.items()},
        ssim={m: [ssim(original[m], v) for v in values] for m, values in maps.items()},
        seconds=time.perf_counter() - started)


def cost_text(n_steps: int | None, methods: Sequence[str], scorecam_seconds: float | None = None) -> str:
    """What the check will cost, said before it runs (``n_steps=None``: not counted yet)."""
    steps = f"{n_steps} randomisation steps" if n_steps is not None else "one randomisation step per block (10–20)"
    passes = f"{n_steps + 1}" if n_steps is not None else "one per step and one more"
    text = f"{steps}: {passes} forward + backward passes (one serves every gradient method, seconds in all)"
    if set(REGION_METHODS) & set(methods):
        text += f", and {passes} Score-CAM runs (every non-flat channel masked, at each step)"
        if scorecam_seconds is not None and n_steps is not None:
            text += f": about {(n_steps + 1) * scorecam_seconds / 60:.1f} min at this explanation's Score-CAM speed"
    return text + "."
