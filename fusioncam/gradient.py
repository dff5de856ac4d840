"""Gradient-family CAMs from one captured ``(A, G)``: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM.

Each method is a small function ``(A, G) → Σ_k w_k A_k`` (``N×h×w``); :func:`gradient_map`
then applies ``L = N(up(ReLU(·)))``. ``A``/``G`` are ``N×K×h×w``; sums ``Σ_ij`` run over h×w.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .fusion import normalize, upsample


def gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: ``w_k = mean_ij G_kij``; ``Σ_k w_k A_k``."""
    return (g.mean(dim=(-2, -1), keepdim=True) * a).sum(1)


def gradcam_plus_plus(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (exp-score closed form): ``α_kij = G² / (2G² + Σ_ij A_k · G³ + ε)`` (0 where
    ``G = 0``), ``w_k = Σ_ij α_kij · ReLU(G_kij)``; ``Σ_k w_k A_k``."""
    g2 = g * g
    sum_a = a.sum(dim=(-2, -1), keepdim=True)
    alpha = torch.where(g != 0, g2 / (2 * g2 + sum_a * g2 * g + 1e-6), 0)
    return ((alpha * g.clamp(min=0)).sum(dim=(-2, -1), keepdim=True) * a).sum(1)


def xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: ``w_k = Σ_ij G_kij A_kij / (Σ_ij A_kij + ε)``; ``Σ_k w_k A_k``."""
    weights = (g * a).sum(dim=(-2, -1), keepdim=True) / (a.sum(dim=(-2, -1), keepdim=True) + 1e-7)
    return (weights * a).sum(1)


def layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """LayerCAM: pixel-wise weights ``ReLU(G_kij)``; ``Σ_k ReLU(G_k) ⊙ A_k``."""
    return (g.clamp(min=0) * a).sum(1)


GRADIENT_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
}


def gradient_map(method: str, a: torch.Tensor, g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``L_grad = N(up(ReLU(cam(A, G))))`` at the input ``size``, ``N×H×W`` in [0, 1]."""
    try:
        cam = GRADIENT_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown gradient method {method!r}; choose one of "
                         f"{', '.join(GRADIENT_METHODS)}") from None
    return normalize(upsample(cam(a.float(), g.float()).clamp(min=0), size))
