"""Fusion math on hand-made maps (METHOD.md §1, §3, §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusioncam import fusion


def ramp(height: int = 6, width: int = 8) -> torch.Tensor:
    return torch.arange(height * width, dtype=torch.float32).view(height, width) / (height * width - 1)


def test_normalize_maps_to_unit_range_and_constant_to_zero() -> None:
    maps = torch.stack([ramp() * 5 + 3, torch.full((6, 8), 7.0), torch.zeros(6, 8)])
    out = fusion.normalize(maps)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], torch.zeros(6, 8)) and torch.equal(out[2], torch.zeros(6, 8))
    assert torch.isfinite(out).all()


def test_theta_zero_changes_nothing() -> None:
    grad = ramp()
    den, zeroed = fusion.denoise(grad, 0)
    assert torch.allclose(den, grad) and zeroed == 0


def test_denoise_threshold_is_numpy_percentile_and_counts_zeroed_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    grad = fusion.normalize(torch.rand(16, 16, generator=generator))
    tau = float(np.percentile(grad.numpy().astype(np.float64), 20))
    den, zeroed = fusion.denoise(grad, 20)
    kept = grad.numpy() >= tau
    expected = grad.numpy() * kept
    expected = (expected - expected.min()) / (expected - expected.min()).max()
    np.testing.assert_allclose(den.numpy(), expected, atol=1e-6)
    assert zeroed == int(((~kept) & (grad.numpy() != 0)).sum())


@pytest.mark.parametrize("theta", [0, 10, 12.5, 33.3, 50, 99.9, 100])
def test_threshold_equals_numpy_percentile_for_batched_maps(theta: float) -> None:
    maps = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(2))
    expected = np.percentile(maps.numpy().astype(np.float64).reshape(3, -1), theta, axis=1)
    np.testing.assert_allclose(fusion.denoise_threshold(maps, theta).numpy(), expected, atol=1e-7)


def test_denoise_is_a_no_op_when_more_than_theta_percent_are_zero() -> None:
    grad = ramp()
    grad[:3] = 0                                    # half the pixels are zero, θ = 20
    den, zeroed = fusion.denoise(grad, 20)
    assert zeroed == 0 and torch.allclose(den, fusion.normalize(grad))


def test_denoise_rejects_theta_outside_percentiles() -> None:
    with pytest.raises(ValueError, match="percentile"):
        fusion.denoise(ramp(), 101)


def test_strength_zero_gives_the_union() -> None:
    l_comb, l_reg = ramp(), ramp().flip(0)
    fused, agree = fusion.fuse(l_comb, l_reg, 0.7, 0.4, strength=0.0)
    assert torch.equal(agree, torch.ones_like(agree))
    assert torch.allclose(fused, fusion.normalize(torch.maximum(0.7 * l_comb, 0.4 * l_reg)))


def test_strength_one_is_a_soft_maximum() -> None:
    l1, l2 = ramp(), ramp().flip(1)
    fused, _ = fusion.fuse(l1, l2, 1.0, 1.0, strength=1.0)
    soft_max = torch.maximum(l1, l2) - (l1 - l2).abs() ** 2 / 2
    assert torch.allclose(fused, fusion.normalize(soft_max), atol=1e-6)


def test_agreement_follows_the_formula_and_is_clipped() -> None:
    l1, l2 = ramp(), torch.zeros(6, 8)
    agree = fusion.agreement(l1, l2, strength=3.0)
    assert torch.allclose(agree, (1 - 3.0 * l1).clamp(0, 1))
    assert agree.min() == 0 and agree.max() == 1


def test_constant_and_all_zero_maps_stay_finite() -> None:
    zeros, const = torch.zeros(5, 5), torch.full((5, 5), 0.3)
    comb = fusion.combine(zeros, const, 0.5, 0.5)
    fused, agree = fusion.fuse(comb, const, 0.5, 0.5, 1.0)
    for tensor in (comb, fused, agree):
        assert torch.isfinite(tensor).all()
    assert torch.equal(fused, torch.zeros(5, 5))


def test_reference_contribution_weights_sum_to_one() -> None:
    den_hat, reg_hat = fusion.contribution_weights(0.3, 0.1, "reference")
    assert den_hat == pytest.approx(0.3 / (0.4 + 1e-8)) and reg_hat == pytest.approx(0.1 / (0.4 + 1e-8))
    assert fusion.contribution_weights(0.3, 0.1, "raw") == (0.3, 0.1)


def test_reference_fusion_weights_reuse_the_rescaled_region_weight() -> None:
    beta_comb, beta_reg = 0.5, 0.2
    _, reg_hat = fusion.contribution_weights(0.6, beta_reg, "reference")
    gamma = fusion.fusion_weights(beta_comb, beta_reg, reg_hat, "reference")
    total_hat, total = beta_comb + reg_hat + 1e-8, beta_comb + beta_reg + 1e-8
    assert gamma == pytest.approx((beta_comb / total_hat, reg_hat / total_hat))
    normalized = fusion.fusion_weights(beta_comb, beta_reg, reg_hat, "normalized")
    assert normalized == pytest.approx((beta_comb / total, beta_reg / total))
    assert gamma != pytest.approx(normalized)
    assert fusion.fusion_weights(beta_comb, beta_reg, reg_hat, "raw") == (beta_comb, beta_reg)


@pytest.mark.parametrize("betas", [(-0.2, 0.1), (0.1, -0.1), (-0.1, 0.1 - 1e-8), (-1e-8 / 2, -1e-8 / 2), (0.0, 0.0)])
def test_negative_and_cancelling_betas_give_finite_maps_and_a_warning(betas: tuple[float, float]) -> None:
    beta_den, beta_reg = betas
    den_hat, reg_hat = fusion.contribution_weights(beta_den, beta_reg, "reference")
    comb = fusion.combine(ramp(), ramp().flip(0), den_hat, reg_hat)
    beta_comb = -0.05
    gammas = fusion.fusion_weights(beta_comb, beta_reg, reg_hat, "reference")
    fused, agree = fusion.fuse(comb, ramp().flip(0), *gammas, strength=1.0)
    assert all(math.isfinite(v) for v in (den_hat, reg_hat, *gammas))
    assert torch.isfinite(fused).all() and torch.isfinite(agree).all()
    assert fused.min() >= 0 and fused.max() <= 1
    weights = fusion.Weights(beta_den, beta_reg, beta_comb, den_hat, reg_hat, *gammas)
    assert any("Unreliable weights" in w for w in fusion.weight_warnings(weights))


def test_positive_weights_raise_no_warning() -> None:
    den_hat, reg_hat = fusion.contribution_weights(0.4, 0.5, "reference")
    gammas = fusion.fusion_weights(0.45, 0.5, reg_hat, "reference")
    assert fusion.weight_warnings(fusion.Weights(0.4, 0.5, 0.45, den_hat, reg_hat, *gammas)) == []


def test_unknown_modes_and_negative_strength_are_refused() -> None:
    with pytest.raises(ValueError, match="weights mode"):
        fusion.contribution_weights(0.1, 0.2, "softmax")
    with pytest.raises(ValueError, match="strength"):
        fusion.agreement(ramp(), ramp(), -1.0)
