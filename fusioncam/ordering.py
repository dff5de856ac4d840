"""The order of anytime Score-CAM's masked passes (METHOD.md "Partial Score-CAM (anytime)").

The partial map after scoring a set ``S`` of channels is Score-CAM's formula with ``α_k = 0`` for
the unscored ones, so it converges fastest when the channels that carry the most of the final
``Σ_k α_k A_k`` come first: those with a large score ``s_k`` (``α_k ∝ exp s_k``) *and* a large
activation. The scores are unknown before the passes; every order here predicts them from stage
1 alone (``A``, ``G``: pure tensor math, no network), and :func:`refit_priority` re-predicts them
from the scores already made.

Static orders (a priority per channel, higher first; ``m_k = N(A_k)`` at the layer's resolution,
``P = Σ_l G_l ⊙ A_l`` the gradient × activation map, ``w_k = mean_ij G_kij``):

- ``gradcam``: ``w_k`` (the Grad-CAM channel weight).
- ``contribution``: ``w_k · mean(A_k)`` (the channel's share of the Grad-CAM sum).
- ``magnitude``: ``|w_k| · ‖A_k‖``.
- ``mass``: ``mean(A_k)``; ``peak``: ``max(A_k)``.
- ``taylor``: ``T_k = Σ_ij m_kij P_ij``, the first-order estimate of ``s_k`` up to a constant: if
  masking the input by ``M_k`` scaled the layer's activations by ``m_k``, the logit would move by
  ``−Σ_ij (1 − m_kij) P_ij`` (exact for a linear head on global average pooling). In logit units.
- ``taylor_mass`` (default): ``T_k + 2 log mean(A_k)``: the predicted score plus the channel's
  activation, as the key ``α_k · mean(A_k)`` of its share of the map; the factor 2 was chosen on
  50 development images disjoint from the 50 of the reported table.

Measured (``python benchmarks/anytime.py --images 50``; bundled EfficientNet-Lite0, layer ``bn2``,
top-1 class, 50 ImageNet sample images; Pearson correlation of the partial Score-CAM map with the
exact one after 5 / 10 / 25 % of the masked passes, mean (minimum)):

- ``gradcam``      0.951 (0.68) / 0.971 (0.81) / 0.989 (0.91)
- ``taylor``       0.981 (0.83) / 0.991 (0.83) / 0.996 (0.83)
- ``taylor_mass``  0.982 (0.83) / 0.991 (0.86) / 0.998 (0.94)
- ``refit`` (:func:`refit_priority` after every 16 channels) 0.981 (0.85) / 0.992 (0.91) / 0.999 (0.99)
- ordered by the exact scores (not available) 0.986 (0.86) / 0.994 (0.92) / 1.000 (0.99)

``taylor_mass`` is the default static order: the best (or tied best) mean at 5–25 % with a better minimum than
``taylor`` and ``mass`` alone (the last two trade places from image set to image set). Means agree
to ±0.005 on the 50 development images; the minima are single images and vary more.
"""

from __future__ import annotations

import torch

from .fusion import normalize
from .region import flat_channels

DEFAULT_ORDER = "taylor_mass"
MASS_WEIGHT = 2.0        # taylor_mass: T_k + MASS_WEIGHT · log mean(A_k)
REFIT_MASS_WEIGHT = 1.0  # refit_priority: ŝ_k + REFIT_MASS_WEIGHT · log mean(A_k)
RIDGE = 1.0              # refit_priority: λ of the ridge on the mask residual
TINY = 1e-12             # floor under log(mean A_k): an all-zero channel is flat, never ranked


def _taylor(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    gain = (g * a).sum(dim=1, keepdim=True)                  # N×1×h×w: P = Σ_l G_l ⊙ A_l
    return (normalize(a) * gain).sum(dim=(-2, -1))


def _log_mass(a: torch.Tensor) -> torch.Tensor:
    return a.mean(dim=(-2, -1)).clamp(min=TINY).log()


_PRIORITIES = {
    "gradcam": lambda a, g: g.mean(dim=(-2, -1)),
    "contribution": lambda a, g: g.mean(dim=(-2, -1)) * a.mean(dim=(-2, -1)),
    "magnitude": lambda a, g: g.mean(dim=(-2, -1)).abs() * a.flatten(-2).norm(dim=-1),
    "mass": lambda a, g: a.mean(dim=(-2, -1)),
    "peak": lambda a, g: a.amax(dim=(-2, -1)),
    "taylor": _taylor,
    "taylor_mass": lambda a, g: _taylor(a, g) + MASS_WEIGHT * _log_mass(a),
}
ORDERS = tuple(_PRIORITIES)


def _check(activations: torch.Tensor, gradients: torch.Tensor) -> None:
    if activations.dim() != 4 or activations.shape != gradients.shape:
        raise ValueError(f"activations and gradients must both be N×K×h×w of one shape, got "
                         f"{tuple(activations.shape)} and {tuple(gradients.shape)}")


def channel_priority(activations: torch.Tensor, gradients: torch.Tensor, method: str = DEFAULT_ORDER) -> torch.Tensor:
    """``N×K`` priorities, higher scored first, from ``A`` and ``G`` (both ``N×K×h×w``); the
    formulas are in this module's docstring. Flat channels get a priority too: they need no pass."""
    if method not in _PRIORITIES:
        raise ValueError(f"unknown channel order {method!r}; choose one of {', '.join(ORDERS)}")
    _check(activations, gradients)
    return _PRIORITIES[method](activations.float(), gradients.float())


def channel_order(activations: torch.Tensor, gradients: torch.Tensor, method: str = DEFAULT_ORDER) -> torch.Tensor:
    """``N×K`` channel indices per image in scoring order: the non-flat channels by descending
    priority (ties by ascending channel index), then the flat ones (which share the baseline score
    and need no pass) by channel index."""
    priority = channel_priority(activations, gradients, method)
    priority = torch.where(flat_channels(activations), float("-inf"), priority)
    return torch.sort(priority, dim=1, descending=True, stable=True).indices


@torch.no_grad()
def refit_priority(activations: torch.Tensor, gradients: torch.Tensor, scores: torch.Tensor,
                   scored: torch.Tensor, method: str = DEFAULT_ORDER) -> torch.Tensor:
    """``N×K`` priorities for the channels still to score, re-predicted from the ``scored`` ones.

    ``scores`` (``N×K``) holds the exact ``s_k`` where ``scored`` (``N×K`` booleans) is true. The
    score is a function of the mask alone, so per image it is predicted from the non-flat scored
    channels by ``ŝ_k = b_0 + b_1 T_k + ⟨m_k − m̄, Q⟩``: ``b`` by least squares of ``s`` on
    ``(1, T)``, ``Q`` a ridge regression (``λ = RIDGE``) of the residual on the centred masks
    ``m_k − m̄`` (``m̄`` their mean over the scored channels): a Taylor estimate whose gain map
    ``P`` is corrected where the network is not linear in the mask. The priority is
    ``ŝ_k + REFIT_MASS_WEIGHT · log mean(A_k)``. An image with fewer than 2 scored channels keeps
    ``channel_priority(..., method)``. Scored channels keep a priority too; the caller skips them.
    """
    _check(activations, gradients)
    if scores.shape != activations.shape[:2] or scored.shape != scores.shape:
        raise ValueError(f"scores and scored must be N×K = {tuple(activations.shape[:2])}, got "
                         f"{tuple(scores.shape)} and {tuple(scored.shape)}")
    a, g = activations.double(), gradients.double()
    priority = channel_priority(activations, gradients, method).double()
    masks = normalize(a).flatten(2)                                       # N×K×hw
    taylor, log_mass = _taylor(a, g), _log_mass(a)
    known = scored & ~flat_channels(activations)
    for n in range(len(a)):
        chosen = known[n].nonzero().squeeze(1)
        if len(chosen) < 2:
            continue
        y = scores[n, chosen].double()
        design = torch.stack([torch.ones_like(y), taylor[n, chosen]], 1)
        b = torch.linalg.lstsq(design, y[:, None], driver="gelsd").solution.squeeze(1)
        residual = y - design @ b
        centre = masks[n, chosen].mean(0)
        m = masks[n, chosen] - centre
        ridge = torch.linalg.solve(m.T @ m + RIDGE * torch.eye(m.shape[1], dtype=m.dtype),
                                   m.T @ (residual - residual.mean()))
        predicted = b[0] + b[1] * taylor[n] + residual.mean() + (masks[n] - centre) @ ridge
        priority[n] = predicted + REFIT_MASS_WEIGHT * log_mass[n]
    return priority.float()
