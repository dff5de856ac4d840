"""Noisy linear imputation (Rong et al., ICML 2022), the fill of ROAD (METHOD.md "ROAD").

Every removed pixel ``i`` of a ``C×H×W`` image takes, per channel, the weighted mean of its
in-image 8-neighbours ``N(i)``, with weight ``w = 1/6`` for the 4 edge and ``1/12`` for the 4
diagonal neighbours; kept pixels are fixed. For the removed pixels ``v`` that is one sparse
linear system, solved at once for all channels:

    ``(Σ_{j∈N(i)} w_ij) · v_i − Σ_{j∈N(i) removed} w_ij · v_j = Σ_{j∈N(i) kept} w_ij · x_j``

solved by one sparse LU factorisation (SciPy); then Gaussian noise is added to the removed
pixels only. When no pixel is kept the system has no anchor (any constant solves it): the
removed image is then 0 in normalised space (the dataset-mean colour), which is also what
pytorch-grad-cam's solver returns for that case.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu

EDGE, DIAGONAL = 1 / 6, 1 / 12
NEIGHBOURS = ((0, 1, EDGE), (0, -1, EDGE), (1, 0, EDGE), (-1, 0, EDGE),
              (1, 1, DIAGONAL), (1, -1, DIAGONAL), (-1, 1, DIAGONAL), (-1, -1, DIAGONAL))


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


def impute(image: torch.Tensor, removed: torch.Tensor | np.ndarray, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``image`` (``C×H×W``, CPU) with its ``removed`` pixels (``H×W`` bool) filled by linear
    imputation, plus ``noise[:, i]`` (a ``C×H×W`` field, e.g. ``σ·N(0, 1)``) on each removed pixel."""
    removed = np.asarray(removed, dtype=bool)
    if removed.shape != tuple(image.shape[-2:]):
        raise ValueError(f"a removal mask of shape {removed.shape} does not fit an image of {tuple(image.shape)}")
    filled = image.detach().to("cpu", torch.float32).reshape(image.shape[0], -1).clone()
    unknowns = np.flatnonzero(removed)
    if len(unknowns) == 0:
        return filled.view_as(image)
    if len(unknowns) == removed.size:
        solution = torch.zeros(image.shape[0], len(unknowns))
    else:
        matrix, rhs, unknowns = imputation_system(removed, image.detach().cpu().numpy())
        # A is symmetric (w_ij = w_ji) and diagonally dominant: a symmetric ordering, no pivoting search.
        factors = splu(matrix, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        solved = factors.solve(rhs)
        solution = torch.from_numpy(solved.T).float()
    index = torch.from_numpy(unknowns)
    if noise is not None:
        solution = solution + noise.reshape(image.shape[0], -1)[:, index].float()
    filled[:, index] = solution
    return filled.view_as(image)
