"""Noisy linear imputation (Rong et al., ICML 2022), the fill of ROAD (METHOD.md "ROAD").

Every removed pixel ``i`` of a ``C×H×W`` image takes, per channel, the weighted mean of its
in-image 8-neighbours ``N(i)``, with weight ``w = 1/6`` for the 4 edge and ``1/12`` for the 4
diagonal neighbours; kept pixels are fixed. For the removed pixels ``v`` that is one sparse
linear system, solved at once for all channels:

    ``(Σ_{j∈N(i)} w_ij) · v_i − Σ_{j∈N(i) removed} w_ij · v_j = Σ_{j∈N(i) kept} w_ij · x_j``

then Gaussian noise is added to the removed pixels only. When no pixel is kept the system has
no anchor (any constant solves it): the removed image is then 0 in normalised space (the
dataset-mean colour), which is also what pytorch-grad-cam's solver returns for that case.

Two solvers of the same system (``solver=``):

- ``"scipy"``: one sparse LU factorisation per removal mask, on the CPU (pytorch-grad-cam's way).
- ``"torch"``: matrix-free on the image's device, every mask × channel of a batch at once, in
  float64. With ``R`` the removed-pixel indicator, ``D = S(1)`` the sum of in-image neighbour
  weights and ``S`` the 8-neighbour weighted sum (zero outside the image), the system is
  ``A v = R ⊙ (D ⊙ v − S(v)) = R ⊙ S((1 − R) ⊙ x)``, with ``v`` zero on kept pixels.
  ``S = ((k ⊗ k) − 4δ) / 12`` for ``k = [1, 2, 1]``, so it is two 3-tap passes.
  ``A`` is symmetric positive definite on the removed pixels (``w_ij = w_ji``, diagonally
  dominant, anchored by at least one kept pixel), so it is solved by conjugate gradients
  preconditioned with one geometric multigrid V-cycle: Jacobi smoothing (2 sweeps before and
  after), bilinear prolongation ``P`` and restriction ``Pᵀ``, the same stencil on each coarser
  grid, where a pixel is removed only if all its 2×2 children are, down to a side of
  :data:`COARSEST_SIDE` solved by :data:`COARSEST_SWEEPS` Jacobi sweeps. Every step is linear
  and symmetric, so the preconditioner is SPD and CG's guarantees hold. CG stops when every
  system's residual is below :data:`TOLERANCE` times its right-hand side (2-norms), about 30
  iterations on ROAD's masks at 224² (measured in ``benchmarks/road.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu

EDGE, DIAGONAL = 1 / 6, 1 / 12
NEIGHBOURS = ((0, 1, EDGE), (0, -1, EDGE), (1, 0, EDGE), (-1, 0, EDGE),
              (1, 1, DIAGONAL), (1, -1, DIAGONAL), (-1, 1, DIAGONAL), (-1, -1, DIAGONAL))
SOLVERS = ("scipy", "torch")
TOLERANCE = 1e-10           # CG stops at ‖r‖ ≤ TOLERANCE · ‖b‖ for every system of the batch
MAX_ITERATIONS = 1000
SMOOTHING_SWEEPS = 2        # Jacobi sweeps before and after each coarse-grid correction
COARSEST_SIDE = 2           # multigrid levels stop once a side is at most this long (≥ 2: a 1-pixel grid has D = 0)
COARSEST_SWEEPS = 10        # Jacobi sweeps on the coarsest grid


def imputation_system(removed: np.ndarray, image: np.ndarray) -> tuple[csc_matrix, np.ndarray, np.ndarray]:
    """``(A, b, unknowns)``: the system above for the ``removed`` (``H×W`` bool) pixels of
    ``image`` (``C×H×W``), ``unknowns`` their flat indices in raster order (row ``k`` of ``A``
    and ``b`` is pixel ``unknowns[k]``)."""
    height, width = removed.shape
    flat_removed = removed.ravel()
    unknowns = np.flatnonzero(flat_removed)
    count = len(unknowns)
    variable = np.full(height * width, -1, dtype=np.int64)
    variable[unknowns] = np.arange(count)
    rows, cols = np.divmod(unknowns, width)
    pixels = image.reshape(image.shape[0], -1).astype(np.float64)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, image.shape[0]))
    entries_row, entries_col, entries_value = [np.arange(count)], [np.arange(count)], []
    for d_row, d_col, weight in NEIGHBOURS:
        r, c = rows + d_row, cols + d_col
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        here, there = np.flatnonzero(inside), (r * width + c)[inside]
        diagonal[here] += weight
        free = flat_removed[there]
        entries_row.append(here[free])
        entries_col.append(variable[there[free]])
        entries_value.append(np.full(int(free.sum()), -weight))
        rhs[here[~free]] += weight * pixels[:, there[~free]].T
    values = np.concatenate([diagonal, *entries_value])
    matrix = csc_matrix((values, (np.concatenate(entries_row), np.concatenate(entries_col))), shape=(count, count))
    return matrix, rhs, unknowns


def _scipy_fill(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` (``C×H×W`` float32) with its ``removed`` pixels solved by sparse LU (no noise)."""
    filled = image.reshape(image.shape[0], -1).copy()
    unknowns = np.flatnonzero(removed)
    if len(unknowns) == 0:
        return image.copy()
    if len(unknowns) == removed.size:
        filled[:] = 0
    else:
        matrix, rhs, unknowns = imputation_system(removed, image)
        # A is symmetric (w_ij = w_ji) and diagonally dominant: a symmetric ordering, no pivoting search.
        factors = splu(matrix, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        filled[:, unknowns] = factors.solve(rhs).T.astype(np.float32)
    return filled.reshape(image.shape)


def _taps(v: torch.Tensor, dim: int, centre: float, side: float) -> torch.Tensor:
    """``side · v[i−1] + centre · v[i] + side · v[i+1]`` along ``dim``, zero outside."""
    out = v * centre
    n = v.shape[dim]
    out.narrow(dim, 1, n - 1).add_(v.narrow(dim, 0, n - 1), alpha=side)
    out.narrow(dim, 0, n - 1).add_(v.narrow(dim, 1, n - 1), alpha=side)
    return out


def _kernel_sum(v: torch.Tensor) -> torch.Tensor:
    """``(k ⊗ k) ∗ v`` over the last two dims with ``k = [1, 2, 1]`` (zero outside the image)."""
    return _taps(_taps(v, -2, 2.0, 1.0), -1, 2.0, 1.0)


def neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """``S(v)_i = Σ_{j∈N(i)} w_ij v_j`` over the last two dims (zero outside the image):
    ``((k ⊗ k) ∗ v − 4v) / 12`` with ``k = [1, 2, 1]``."""
    return (_kernel_sum(v) - 4 * v) / 12


def _restrict_last(v: torch.Tensor) -> torch.Tensor:
    """Along the last dim: ``u[I] = ½ v[2I−1] + v[2I] + ½ v[2I+1]`` (zero outside), ``⌈n/2⌉`` long."""
    n = v.shape[-1]
    coarse = -(-n // 2)
    padded = F.pad(v, (1, 2 * coarse - n))
    return 0.5 * padded[..., 0:2 * coarse:2] + padded[..., 1:2 * coarse:2] + 0.5 * padded[..., 2:2 * coarse + 1:2]


def _prolong_last(c: torch.Tensor, n: int) -> torch.Tensor:
    """The transpose of :func:`_restrict_last`: a ``⌈n/2⌉``-long ``c`` to ``n`` values, linear
    interpolation in between (``e[2I] = c[I]``, ``e[2I+1] = ½ (c[I] + c[I+1])``)."""
    coarse = c.shape[-1]
    padded = c.new_zeros(*c.shape[:-1], 2 * coarse + 1)
    padded[..., 1:2 * coarse:2] = c
    padded[..., 0:2 * coarse - 1:2] += 0.5 * c
    padded[..., 2:2 * coarse + 1:2] += 0.5 * c
    return padded[..., 1:n + 1]


def _restrict(v: torch.Tensor) -> torch.Tensor:
    """``Pᵀ v`` over the last two dims: weights ``k(a) k(b)``, ``k = (½, 1, ½)``, on a grid of
    ``⌈H/2⌉ × ⌈W/2⌉`` pixels."""
    return _restrict_last(_restrict_last(v).transpose(-1, -2)).transpose(-1, -2)


def _prolong(c: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``P c``: bilinear prolongation of a coarse grid to ``shape`` (``H, W``), the transpose of
    :func:`_restrict`."""
    return _prolong_last(_prolong_last(c, shape[-1]).transpose(-1, -2), shape[-2]).transpose(-1, -2)


class _Level:
    """One multigrid level: the removed-pixel indicator ``R`` (``B×1×H×W``), ``D = S(1)`` and
    ``R / D`` (Jacobi).

    Every operator pass reads and writes whole ``B×C×H×W`` float64 batches (on a GPU the solve is
    bound by that traffic and by the number of kernels), so :meth:`apply` is written with the
    fewest passes: ``A v = R ⊙ (D ⊙ v − ((k ⊗ k) ∗ v − 4v) / 12) = R/12 ⊙ ((12 D + 4) ⊙ v − (k ⊗ k) ∗ v)``.
    """

    def __init__(self, removed: torch.Tensor) -> None:
        self.removed = removed
        self.diagonal = neighbour_sum(torch.ones(removed.shape[-2:], dtype=removed.dtype, device=removed.device))
        self.inverse = removed / self.diagonal
        self._removed_twelfth = removed / 12
        self._centre = 12 * self.diagonal + 4

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``A v = R ⊙ (D ⊙ v − S(v))`` (in the form of the class doc)."""
        return torch.addcmul(_kernel_sum(v).neg_(), self._centre, v).mul_(self._removed_twelfth)

    def smooth(self, x: torch.Tensor | None, r: torch.Tensor, sweeps: int) -> torch.Tensor:
        """``sweeps`` Jacobi sweeps ``x ← x + R/D ⊙ (r − A x)``; ``x=None`` is the zero guess,
        whose first sweep is just ``R/D ⊙ r``."""
        if x is None:
            x, sweeps = self.inverse * r, sweeps - 1
        for _ in range(sweeps):
            x = torch.addcmul(x, self.inverse, r - self.apply(x))
        return x


def _levels(removed: torch.Tensor) -> list[_Level]:
    """The grids from ``removed`` (``B×1×H×W`` float) down to a side ≤ :data:`COARSEST_SIDE`; a
    coarse pixel is removed when all its 2×2 children are."""
    levels = [_Level(removed)]
    while min(removed.shape[-2:]) > COARSEST_SIDE:
        removed = -F.max_pool2d(-removed, 2, ceil_mode=True)
        levels.append(_Level(removed))
    return levels


def _v_cycle(levels: list[_Level], r: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """One symmetric V-cycle from a zero guess: an SPD approximation of ``A⁻¹ r``."""
    level = levels[depth]
    if depth == len(levels) - 1:
        return level.smooth(None, r, COARSEST_SWEEPS)
    x = level.smooth(None, r, SMOOTHING_SWEEPS)
    below = levels[depth + 1]
    correction = _v_cycle(levels, below.removed * _restrict(r - level.apply(x)), depth + 1)
    x = torch.addcmul(x, level.removed, _prolong(correction, r.shape[-2:]))
    return level.smooth(x, r, SMOOTHING_SWEEPS)


def _batched(values: torch.Tensor) -> torch.Tensor:
    """Per-system sums over the last two dims, shaped to broadcast back (``B×C×1×1``)."""
    return values.sum((-2, -1), keepdim=True)


def torch_fill(image: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(filled, iterations)``: ``image`` (``C×H×W``) with the ``removed`` pixels of each mask
    (``B×H×W`` bool) solved by multigrid-preconditioned CG in float64 (no noise), ``B×C×H×W``
    float64 on the image's device (on the CPU for a device without float64, e.g. MPS)."""
    device = image.device if image.device.type != "mps" else torch.device("cpu")
    x = image.detach().to(device, torch.float64)
    indicator = removed.to(device, torch.float64)[:, None]
    kept = x * (1 - indicator)
    levels = _levels(indicator)
    b = indicator * neighbour_sum(kept)
    v, r = torch.zeros_like(b), b.clone()
    z = _v_cycle(levels, r)
    p, rz = z, _batched(r * z)
    limit = TOLERANCE ** 2 * _batched(b * b)
    iterations = 0
    while iterations < MAX_ITERATIONS and bool((_batched(r * r) > limit).any()):
        iterations += 1
        ap = levels[0].apply(p)
        curvature = _batched(p * ap)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(torch.finfo(torch.float64).tiny), 0)
        v = v + alpha * p
        r = r - alpha * ap
        z = _v_cycle(levels, r)
        rz_next = _batched(r * z)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(torch.float64).tiny), 0)
        p, rz = z + beta * p, rz_next
    return kept + v, iterations


def default_solver(device: torch.device | str) -> str:
    """``"torch"`` on a CUDA device, ``"scipy"`` elsewhere: on the CPU the sparse LU is faster
    (``benchmarks/road.py``)."""
    return "torch" if torch.device(device).type == "cuda" else "scipy"


def impute_batch(image: torch.Tensor, removed: torch.Tensor | np.ndarray, noise: torch.Tensor | None = None,
                 solver: str = "scipy") -> torch.Tensor:
    """``B×C×H×W`` float32: ``image`` (``C×H×W``) filled by linear imputation under each of the
    ``removed`` masks (``B×H×W`` bool), plus ``noise`` (a ``C×H×W`` field, e.g. ``σ·N(0, 1)``,
    the same for every mask) on each removed pixel. ``solver="torch"`` solves on the image's
    device and returns there; ``"scipy"`` solves on the CPU and returns on the CPU."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown imputation solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    masks = torch.as_tensor(np.asarray(removed.cpu() if isinstance(removed, torch.Tensor) else removed, dtype=bool))
    if masks.ndim != 3 or masks.shape[1:] != image.shape[-2:]:
        raise ValueError(f"removal masks of shape {tuple(masks.shape)} do not fit an image of {tuple(image.shape)}")
    if solver == "scipy":
        pixels = image.detach().to("cpu", torch.float32).numpy()
        filled = torch.from_numpy(np.stack([_scipy_fill(pixels, mask) for mask in masks.numpy()]))
    else:
        filled64, _ = torch_fill(image, masks)
        filled = filled64.float()
    if noise is not None:
        noise = noise.to(filled.device, torch.float32)
        filled = torch.where(masks.to(filled.device)[:, None], filled + noise, filled)
    return filled


def impute(image: torch.Tensor, removed: torch.Tensor | np.ndarray, noise: torch.Tensor | None = None,
           solver: str = "scipy") -> torch.Tensor:
    """``image`` (``C×H×W``) with its ``removed`` pixels (``H×W`` bool) filled by linear
    imputation, plus ``noise[:, i]`` (a ``C×H×W`` field, e.g. ``σ·N(0, 1)``) on each removed
    pixel: :func:`impute_batch` of one mask."""
    mask = np.asarray(removed.cpu() if isinstance(removed, torch.Tensor) else removed, dtype=bool)
    if mask.shape != tuple(image.shape[-2:]):
        raise ValueError(f"a removal mask of shape {mask.shape} does not fit an image of {tuple(image.shape)}")
    return impute_batch(image, mask[None], noise, solver)[0]
