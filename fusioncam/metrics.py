"""Faithfulness metrics: Average Drop, Increase in Confidence, Deletion and Insertion (METHOD.md).

For an image ``x`` with class ``c``, a saliency map ``L`` (``H×W`` in [0, 1]) and the
explanation's baseline ``x_b`` (masking ``m(x, M) = x_b + M ⊙ (x − x_b)``):

- ``Y = p(x)_c`` and ``O = p(m(x, L))_c``;
  **Average Drop** (%) ``= 100 · mean_i max(0, Y_i − O_i) / Y_i`` (lower is better),
  **Increase in Confidence** (%) ``= 100 · mean_i 1[O_i > Y_i]`` (higher is better).
- Pixels are ordered by decreasing saliency with a stable sort (ties keep raster order, so
  results are deterministic). With ``P = H·W`` pixels and ``n`` steps, step ``i`` (``0…n``)
  covers the first ``k_i = ⌊i·P / n⌋`` pixels of that order (448 per step at 224² and n = 112).
- **Deletion**: ``d_i = p(m(x, 1[rank ≥ k_i]))_c`` — the first ``k_i`` pixels replaced by ``x_b``;
  **Insertion**: ``s_i = p(x̃ + 1[rank < k_i] ⊙ (x − x̃))_c`` from a Gaussian-blurred copy
  ``x̃`` (kernel 51, σ 50) — the first ``k_i`` original pixels put back.
- Each curve's AUC is the trapezoid rule over ``t_i = i / n`` on [0, 1]:
  ``AUC = (1/n) · Σ_{i<n} (y_i + y_{i+1}) / 2`` (Deletion: lower is better; Insertion: higher).

:func:`score_maps` scores any number of maps of one image in batched forward passes: all
``1 + M·(2n + 3)`` perturbed inputs are enumerated once and built chunk by chunk, never one
forward per step.

**ROAD** (:func:`road`, Rong et al. 2022, as pytorch-grad-cam computes it): for each
``p ∈ {10, …, 90}`` remove every pixel with ``L ≥ percentile(L, p)`` (MoRF) or
``1 − L ≥ percentile(1 − L, p)`` (LeRF), ties included, fill them by noisy linear imputation
(:mod:`fusioncam.imputation`), score ``p(x̃)_c − p(x)_c``; MoRF (lower is better) and LeRF
(higher is better) are averaged over ``p``, ROAD combined ``= (LeRF − MoRF) / 2``.
:func:`protocol_card` states every one of these settings beside a table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .baselines import apply_mask, blurred
from .models import LoadedModel

DEFAULT_STEPS = 112
_SALIENCY, _DELETE, _INSERT = 0, 1, 2   # the three kinds of perturbed input


@dataclass(frozen=True)
class MapScores:
    """One map's faithfulness on one image: ``Y``, ``O`` and both curves (``n_steps + 1`` values)."""

    probability: float          # Y = p(x)_c
    masked_probability: float   # O = p(m(x, L))_c
    deletion: np.ndarray        # d_0 … d_n
    insertion: np.ndarray       # s_0 … s_n

    @property
    def drop(self) -> float:
        """This image's term of Average Drop, ``max(0, Y − O) / Y`` (a fraction, not %)."""
        return max(0.0, self.probability - self.masked_probability) / self.probability if self.probability > 0 else 0.0

    @property
    def increase(self) -> bool:
        """This image's term of Increase in Confidence, ``O > Y``."""
        return self.masked_probability > self.probability

    @property
    def deletion_auc(self) -> float:
        return auc(self.deletion)

    @property
    def insertion_auc(self) -> float:
        return auc(self.insertion)


def auc(curve: Sequence[float] | np.ndarray) -> float:
    """Trapezoid area under ``y_0 … y_n`` sampled at ``t_i = i / n`` on [0, 1]."""
    values = np.asarray(curve, dtype=np.float64)
    if len(values) < 2:
        raise ValueError("a curve needs at least two points")
    return float((values[:-1] + values[1:]).sum() / (2 * (len(values) - 1)))


def average_drop(probabilities: Sequence[float], masked: Sequence[float]) -> float:
    """Average Drop (%) ``= 100 · mean_i max(0, Y_i − O_i) / Y_i``; an image with ``Y_i = 0``
    contributes 0 (nothing to drop), as :attr:`MapScores.drop`."""
    y, o = np.asarray(probabilities, dtype=np.float64), np.asarray(masked, dtype=np.float64)
    drops = np.divide(np.maximum(0.0, y - o), y, out=np.zeros_like(y), where=y > 0)
    return float(100 * np.mean(drops))


def increase_in_confidence(probabilities: Sequence[float], masked: Sequence[float]) -> float:
    """Increase in Confidence (%) ``= 100 · mean_i 1[O_i > Y_i]``."""
    y, o = np.asarray(probabilities, dtype=np.float64), np.asarray(masked, dtype=np.float64)
    return float(100 * np.mean(o > y))


def pixel_order(saliency: torch.Tensor) -> torch.Tensor:
    """Flat pixel indices by decreasing saliency; a stable sort keeps ties in raster order."""
    return torch.sort(saliency.flatten(), descending=True, stable=True).indices


def step_counts(pixels: int, n_steps: int) -> torch.Tensor:
    """``k_i = ⌊i·P / n⌋`` for ``i = 0…n``: how many pixels step ``i`` has deleted or inserted."""
    if n_steps < 1:
        raise ValueError(f"the number of steps must be ≥ 1, got {n_steps}")
    return torch.arange(n_steps + 1, dtype=torch.long) * pixels // n_steps


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """``M×P`` ranks: ``rank[m, p]`` is pixel ``p``'s position in map ``m``'s order."""
    ranks = torch.empty(maps.shape[0], maps[0].numel(), dtype=torch.long, device=maps.device)
    positions = torch.arange(ranks.shape[1], device=maps.device)
    for m, saliency in enumerate(maps):
        ranks[m, pixel_order(saliency)] = positions
    return ranks


def _jobs(n_maps: int, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kind, map, count)`` per perturbed input: first ``x`` itself (a deletion of 0 pixels), then
    per map ``m(x, L)``, the ``n + 1`` deletion steps and the ``n + 1`` insertion steps."""
    steps = len(counts)
    per_map_kind = torch.cat([torch.tensor([_SALIENCY]), torch.full((steps,), _DELETE), torch.full((steps,), _INSERT)])
    per_map_count = torch.cat([torch.zeros(1, dtype=torch.long), counts, counts])
    kind = torch.cat([torch.tensor([_DELETE]), per_map_kind.repeat(n_maps)])
    which = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(n_maps).repeat_interleave(len(per_map_kind))])
    count = torch.cat([torch.zeros(1, dtype=torch.long), per_map_count.repeat(n_maps)])
    return kind, which, count


def _masks(kind: torch.Tensor, which: torch.Tensor, count: torch.Tensor, maps: torch.Tensor,
           ranks: torch.Tensor) -> torch.Tensor:
    """``B×H×W`` masks ``M`` (1 = the original pixel, weighted against the start image)."""
    rank = ranks[which]
    binary = torch.where((kind == _INSERT)[:, None], rank < count[:, None], rank >= count[:, None])
    flat = torch.where((kind == _SALIENCY)[:, None], maps.flatten(1)[which], binary.to(maps.dtype))
    return flat.view(len(kind), *maps.shape[1:])


def score_maps(model: LoadedModel, x: torch.Tensor, maps: Mapping[str, torch.Tensor | np.ndarray], target: int,
               baseline: torch.Tensor, n_steps: int = DEFAULT_STEPS, chunk_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, MapScores]:
    """Average Drop / Increase in Confidence terms and Deletion / Insertion curves of every map.

    ``x`` and ``baseline`` are ``3×H×W`` normalised inputs (``x_b`` of the explanation), each map
    is ``H×W`` in [0, 1]. The ``1 + M·(2n + 3)`` perturbed inputs go through the network
    ``chunk_size`` at a time (default: :func:`~fusioncam.backend.auto_chunk_size`);
    ``progress(done, total)`` is called after each chunk.
    """
    from .backend import auto_chunk_size

    if not maps:
        raise ValueError("no maps to score")
    device = model.device
    x, baseline = x.to(device, torch.float32), baseline.to(device, torch.float32)
    stacked = torch.stack([torch.as_tensor(m, dtype=torch.float32) for m in maps.values()]).to(device)
    if stacked.shape[1:] != x.shape[1:]:
        raise ValueError(f"maps of shape {tuple(stacked.shape[1:])} do not match the input's {tuple(x.shape[1:])}")
    chunk = chunk_size or auto_chunk_size(device, tuple(x.shape), model)
    if chunk < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {chunk}")
    counts = step_counts(x[0].numel(), n_steps)
    kind, which, count = (t.to(device) for t in _jobs(len(stacked), counts))
    ranks = _ranks(stacked)
    starts = torch.stack([baseline, blurred(x[None])[0]])      # deletion / saliency start from x_b, insertion from x̃
    results = torch.empty(len(kind), device=device)
    with torch.inference_mode():
        for begin in range(0, len(kind), chunk):
            part = slice(begin, begin + chunk)
            masks = _masks(kind[part], which[part], count[part], stacked, ranks)
            batch = apply_mask(x.expand(len(masks), -1, -1, -1), starts[(kind[part] == _INSERT).long()], masks)
            probs = torch.softmax(model.score(batch, chunk).float(), dim=1)
            results[part] = probs[:, target]
            if progress is not None:
                progress(min(begin + chunk, len(kind)), len(kind))
    values = results.cpu().double().numpy()
    steps, per_map = n_steps + 1, 2 * n_steps + 3
    scores = {}
    for m, name in enumerate(maps):
        base = 1 + m * per_map
        scores[name] = MapScores(probability=float(values[0]), masked_probability=float(values[base]),
                                 deletion=values[base + 1:base + 1 + steps].copy(),
                                 insertion=values[base + 1 + steps:base + per_map].copy())
    return scores


ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01   # standard deviation of the imputation noise, in normalised input space


@dataclass(frozen=True)
class RoadScores:
    """One map's ROAD on one image: ``p(x̃)_c − p(x)_c`` at each percentile, with the most
    (``morf``) or the least (``lerf``) relevant pixels removed and imputed."""

    percentiles: tuple[float, ...]
    morf: np.ndarray
    lerf: np.ndarray

    @property
    def morf_mean(self) -> float:
        """MoRF averaged over the percentiles (lower is better)."""
        return float(np.mean(self.morf))

    @property
    def lerf_mean(self) -> float:
        """LeRF averaged over the percentiles (higher is better)."""
        return float(np.mean(self.lerf))

    @property
    def combined(self) -> float:
        """ROAD combined ``= (LeRF − MoRF) / 2`` (higher is better)."""
        return (self.lerf_mean - self.morf_mean) / 2


def road_removed(saliency: np.ndarray, percentile: float, most_relevant: bool) -> np.ndarray:
    """The pixels ROAD removes (``H×W`` bool), ties at the threshold included: MoRF
    ``L ≥ percentile(L, p)``, LeRF ``1 − L ≥ percentile(1 − L, p)`` (numpy's linear percentile)."""
    values = saliency if most_relevant else 1 - saliency
    return values >= np.percentile(values, percentile)


def road(model: LoadedModel, x: torch.Tensor, target: int, maps: Mapping[str, torch.Tensor | np.ndarray],
         percentiles: Sequence[float] = ROAD_PERCENTILES, noise: float = ROAD_NOISE, seed: int = 0,
         chunk_size: int | None = None, progress: Callable[[int, int], None] | None = None,
         solver: str | None = None) -> dict[str, RoadScores]:
    """ROAD (Rong et al., 2022) of every map, as METHOD.md defines it.

    For each map and each ``p`` in ``percentiles``, the pixels of :func:`road_removed` (MoRF, then
    LeRF) are filled by :func:`~fusioncam.imputation.impute_batch` with ``solver`` (default:
    :func:`~fusioncam.imputation.default_solver` of the model's device; a map's ``2·P`` masks
    are solved as one batch, on a GPU every map's at once), plus noise of standard deviation
    ``noise``; the score is ``p(x̃)_c − p(x)_c`` (softmax probabilities of class ``target``).
    The noise is one field ``noise · N(0, 1)`` drawn from ``seed`` and shared by every removal
    (each removed pixel still gets independent noise), so results are deterministic and maps
    are compared under the same noise. ``x`` is ``3×H×W`` normalised, each map ``H×W``. The
    ``1 + 2·P·M`` images go through the network in chunks of ``chunk_size``, every forward
    padded to that size (one input shape); ``progress(done, total)`` counts the imputations
    and the forward chunks.
    """
    from .backend import auto_chunk_size
    from .imputation import SOLVERS, default_solver, impute_batch

    if not maps:
        raise ValueError("no maps to score")
    if not percentiles or not all(0 <= p <= 100 for p in percentiles):
        raise ValueError(f"ROAD percentiles must be in [0, 100], got {list(percentiles)}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"the ROAD noise must be a finite number ≥ 0, got {noise}")
    device = model.device
    solver = solver or default_solver(device)
    if solver not in SOLVERS:
        raise ValueError(f"unknown ROAD solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    image = x.detach().to("cpu", torch.float32)
    arrays = {name: np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float32)
              for name, m in maps.items()}
    for array in arrays.values():
        if array.shape != tuple(image.shape[1:]):
            raise ValueError(f"maps of shape {array.shape} do not match the input's {tuple(image.shape[1:])}")
    chunk = chunk_size or auto_chunk_size(device, tuple(image.shape), model)
    if chunk < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {chunk}")
    field = noise * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed)) if noise > 0 else None
    source = image.to(device) if solver == "torch" else image
    solves = 2 * len(percentiles) * len(arrays)
    total, done = solves + -(-(solves + 1) // chunk), 0
    queue, probabilities = image[None].to(device), []

    def forward(rows: int) -> None:
        nonlocal queue, done
        batch, queue = queue[:rows], queue[rows:]
        with torch.inference_mode():
            probabilities.append(torch.softmax(model.score(batch, chunk).float(), dim=1)[:, target].cpu().double())
        done += 1
        if progress is not None:
            progress(done, total)

    names = list(arrays)
    group = len(names) if device.type == "cuda" else 1      # maps whose masks are solved as one batch
    for start in range(0, len(names), group):
        masks = np.stack([road_removed(arrays[name], p, most_relevant) for name in names[start:start + group]
                          for most_relevant in (True, False) for p in percentiles])
        queue = torch.cat([queue, impute_batch(source, masks, field, solver).to(device)])
        done += len(masks)
        if progress is not None:
            progress(done, total)
        while len(queue) >= chunk:
            forward(chunk)
    if len(queue):
        forward(len(queue))
    values = torch.cat(probabilities).numpy()
    differences = (values[1:] - values[0]).reshape(len(arrays), 2, len(percentiles))
    return {name: RoadScores(tuple(percentiles), differences[m, 0].copy(), differences[m, 1].copy())
            for m, name in enumerate(arrays)}


BASELINE_WORDS = {
    "mean": "the dataset-mean colour (0 in normalised space)",
    "black": "black (pixel value 0, i.e. −mean/std in normalised space)",
    "blur": "a Gaussian-blurred copy of the image (kernel 51, σ 50)",
}


def protocol_card(baseline: str = "mean", n_steps: int = DEFAULT_STEPS, size: tuple[int, int] = (224, 224),
                  road_noise: float | None = ROAD_NOISE, road_percentiles: Sequence[float] = ROAD_PERCENTILES,
                  target: str = "the model's top-1 prediction") -> str:
    """The settings behind a faithfulness table, as a Markdown table: the settings on which
    published numbers disagree (masking baseline, probabilities or logits, relative or absolute
    Average Drop, steps and pixels per step, the insertion blur, ROAD's noise). ``road_noise=None``
    leaves the ROAD row out (a table without ROAD)."""
    if baseline not in BASELINE_WORDS:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINE_WORDS)}")
    pixels = size[0] * size[1]
    per_step = f"{pixels // n_steps}" if pixels % n_steps == 0 else f"about {pixels / n_steps:.0f}"
    rows = [
        ("Target class", target),
        ("Scores", "softmax probabilities `p_c` of the target class (not logits)"),
        ("Masking baseline", f"{BASELINE_WORDS[baseline]}: `m(x, L) = x_b + L ⊙ (x − x_b)` for Average Drop and "
                             "Increase in Confidence; Deletion fills the removed pixels with it"),
        ("Average Drop", "relative, in %: `100 · mean max(0, Y − O) / Y` with `Y = p(x)_c`, `O = p(m(x, L))_c` "
                         "(an image with `Y = 0` adds 0)"),
        ("Increase in Confidence", "`100 · mean 1[O > Y]` (%)"),
        ("Deletion / Insertion", f"{n_steps} steps of {per_step} pixels ({size[0]}×{size[1]} input), most "
                                 "salient first, ties in raster order; AUC by the trapezoid rule on [0, 1], "
                                 "step 0 included"),
        ("Insertion start", "a Gaussian-blurred copy of the image (kernel 51, σ 50), original pixels put back"),
    ]
    if road_noise is not None:
        shown = ", ".join(f"{p:g}" for p in road_percentiles)
        rows.append(("ROAD", f"percentiles {shown}; removed pixels (ties included) filled by noisy linear "
                             f"imputation, noise σ = {road_noise:g} in normalised space (fixed seed); score "
                             "`p(x̃)_c − p(x)_c`; combined = (LeRF − MoRF) / 2"))
    lines = ["| Protocol | Setting |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)
