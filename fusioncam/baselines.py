"""Baselines ``x_b`` and masking ``m(x, M) = x_b + M ⊙ (x − x_b)``, in normalised input space."""

from __future__ import annotations

import torch
from torchvision.transforms.functional import gaussian_blur

BASELINES = ("mean", "black", "blur")
BLUR_KERNEL = 51
BLUR_SIGMA = 50.0


def blurred(x: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """A Gaussian-blurred copy of ``x`` (``N×3×H×W``), kernel shrunk to fit small inputs."""
    largest = 2 * min(x.shape[-2:]) - 1           # reflect padding needs kernel // 2 < side
    kernel = min(kernel, largest if largest % 2 else largest - 1)
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def make_baseline(x: torch.Tensor, kind: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``x_b`` for ``x`` (``N×3×H×W``, normalised): ``mean`` → 0 (the dataset-mean colour),
    ``black`` → ``(0 − mean) / std`` per channel, ``blur`` → a Gaussian-blurred copy."""
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "black":
        black = -torch.tensor(mean, dtype=x.dtype, device=x.device) / torch.tensor(std, dtype=x.dtype, device=x.device)
        return black.view(1, 3, 1, 1).expand_as(x).clone()
    if kind == "blur":
        return blurred(x)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def apply_mask(x: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``m(x, M) = x_b + M ⊙ (x − x_b)`` for maps ``M`` (``N×H×W`` or ``N×1×H×W``) in [0, 1]."""
    if mask.dim() == x.dim() - 1:
        mask = mask.unsqueeze(-3)
    return torch.addcmul(baseline, mask, x - baseline)
