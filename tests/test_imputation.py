"""The torch solver of ROAD's imputation (fusioncam/imputation.py) against SciPy's sparse LU on
random and structured removal masks, its edge cases, and its batch entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam.imputation import default_solver, impute, impute_batch, neighbour_sum, torch_fill

HEIGHT, WIDTH = 40, 48


def structured_masks(height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """All removed, none, one pixel, the border ring, a corner block, a disc with 90 % removed
    around it (as ROAD's MoRF at p = 10 on a blob-shaped map), a thin line."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    one = torch.zeros(height, width, dtype=torch.bool)
    one[height // 2, width // 3] = True
    border = (rows == 0) | (cols == 0) | (rows == height - 1) | (cols == width - 1)
    corner = (rows < height // 3) & (cols < width // 4)
    distance = (rows - height * 0.6) ** 2 + (cols - width * 0.3) ** 2
    ninety = distance > torch.quantile(distance.float().flatten(), 0.1)
    line = cols == width // 2
    return torch.stack([torch.ones_like(one), torch.zeros_like(one), one, border, corner, ninety, line])


def random_masks(count: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    """Independent pixels removed with probability 0.1 … 0.95."""
    generator = torch.Generator().manual_seed(seed)
    fractions = torch.linspace(0.1, 0.95, count)[:, None, None]
    return torch.rand(count, height, width, generator=generator) < fractions


def image_of(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("masks", [structured_masks(), random_masks(6)], ids=["structured", "random"])
def test_the_torch_solver_equals_scipy(masks: torch.Tensor) -> None:
    image = image_of()
    scipy = impute_batch(image, masks, solver="scipy")
    ours = impute_batch(image, masks, solver="torch")
    assert ours.shape == scipy.shape == (len(masks), 3, HEIGHT, WIDTH)
    assert (ours - scipy).abs().max() < 1e-4
    for mask, filled in zip(masks, ours, strict=True):                 # the kept pixels are untouched
        assert torch.equal(filled[:, ~mask], image[:, ~mask])


def test_the_torch_solver_equals_scipy_on_a_224_image_with_90_percent_removed() -> None:
    image = image_of(224, 224, seed=3)
    mask = structured_masks(224, 224)[5]
    filled, iterations = torch_fill(image, mask[None])
    assert (filled[0].float() - impute(image, mask)).abs().max() < 1e-4
    assert 0 < iterations < 100


def test_edge_cases_and_noise_match_the_scipy_path() -> None:
    image, masks = image_of(), structured_masks()
    noise = 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(5))
    ours = impute_batch(image, masks, noise, solver="torch")
    assert torch.equal(ours[0], noise)                        # nothing kept: 0 (the mean colour) + noise
    assert torch.equal(ours[1], image)                        # nothing removed: the image itself, no noise
    assert (ours - impute_batch(image, masks, noise, solver="scipy")).abs().max() < 1e-4
    assert torch.equal(impute(image, masks[2], solver="torch"), impute_batch(image, masks[2:3], solver="torch")[0])


def test_the_stencil_is_the_weighted_neighbour_sum_with_the_border_left_out() -> None:
    v = torch.arange(12, dtype=torch.float64).view(3, 4) ** 2
    expected = torch.zeros_like(v)
    for r in range(3):
        for c in range(4):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr or dc) and 0 <= r + dr < 3 and 0 <= c + dc < 4:
                        expected[r, c] += v[r + dr, c + dc] / (6 if dr == 0 or dc == 0 else 12)
    torch.testing.assert_close(neighbour_sum(v), expected)


def test_bad_solver_or_mask_shape_is_one_sentence() -> None:
    image = image_of()
    with pytest.raises(ValueError, match="unknown imputation solver"):
        impute_batch(image, structured_masks(), solver="cg")
    with pytest.raises(ValueError, match="do not fit"):
        impute_batch(image, np.zeros((2, 3, 3), dtype=bool), solver="torch")
    assert default_solver("cpu") == "scipy" and default_solver("cuda:0") == "torch"
