"""Fusion math on hand-made maps (METHOD.md §1, §3, §4), and a plain transcription of the whole
method on tiny models as the oracle for every weight mode, every baseline and the re-fusion cache."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from fusioncam import Explanation, LoadedModel, explain, fusion


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


@pytest.mark.parametrize("betas", [(0.3, 0.1), (0.02, 0.5), (-0.2, 0.6)])
def test_reference_contribution_weights_sum_to_one(betas: tuple[float, float]) -> None:
    den_hat, reg_hat = fusion.contribution_weights(*betas, "reference")
    total = sum(betas)
    assert den_hat + reg_hat == pytest.approx(total / (total + 1e-8), abs=1e-12)
    assert den_hat + reg_hat == pytest.approx(1.0, abs=1e-7)
    assert den_hat == pytest.approx(betas[0] / (total + 1e-8)) and reg_hat == pytest.approx(betas[1] / (total + 1e-8))
    assert fusion.contribution_weights(*betas, "raw") == betas


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


CANCELS = "nearly cancel"


def weights_for(beta_den: float, beta_reg: float, beta_comb: float, mode: str) -> fusion.Weights:
    hats = fusion.contribution_weights(beta_den, beta_reg, mode)
    gammas = fusion.fusion_weights(beta_comb, beta_reg, hats[1], mode)
    return fusion.Weights(beta_den, beta_reg, beta_comb, *hats, *gammas)


@pytest.mark.parametrize("mode", ["reference", "normalized"])
def test_tiny_positive_betas_reach_the_near_zero_sum_warning(mode: str) -> None:
    """β_den + β_reg = 2e-6 > 0: no β is negative, yet both modes divide by that sum."""
    warnings = fusion.weight_warnings(weights_for(1e-6, 1e-6, 0.3, mode), mode)
    assert len(warnings) == 1 and CANCELS in warnings[0]


@pytest.mark.parametrize(("betas", "warned"), [
    # β_comb + β̂_reg ≈ 0 only: β̂_reg = 0.2 / 0.25 = 0.8 (reference divides by it, normalized does not)
    ((0.05, 0.2, -0.8), {"reference"}),
    # β_comb + β_reg ≈ 0 only: normalized divides by it; reference by β_comb + β̂_reg = −0.2 + 0.8
    ((0.05, 0.2, -0.2), {"normalized"}),
    # β_den + β_reg ≈ 0: reference and normalized divide by it, raw by nothing
    ((0.3, -0.3 + 5e-5, 0.1), {"reference", "normalized"}),
])
def test_the_near_zero_sum_warning_tests_the_denominators_of_the_mode_used(
        betas: tuple[float, float, float], warned: set[str]) -> None:
    for mode in fusion.WEIGHT_MODES:
        warnings = fusion.weight_warnings(weights_for(*betas, mode), mode)
        assert any(CANCELS in w for w in warnings) == (mode in warned), mode
        assert any("negative β" in w for w in warnings)      # every case here has a negative β


# --- A plain transcription of METHOD.md §1–4 on tiny models, for every weight mode and baseline ---

def plain_fusion_cam(head: Callable[[torch.Tensor], torch.Tensor], tail: Callable[[torch.Tensor], torch.Tensor],
                     x: torch.Tensor, x_b: torch.Tensor, target: int, mode: str, theta: float = 10.0,
                     strength: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """METHOD.md literally: ``A = head(x)``, ``f = tail(A)``; one forward per channel, numpy's
    percentile, ``m(x, M) = x_b + M ⊙ (x − x_b)``. Returns the maps and the β's."""
    eps, size = 1e-8, tuple(x.shape[-2:])

    def n(m: torch.Tensor) -> torch.Tensor:
        m = m - m.min()
        return m / m.max() if m.max() > 0 else m

    def up(m: torch.Tensor) -> torch.Tensor:
        return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]

    def logits(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tail(head(image[None]))[0]

    def prob(mask: torch.Tensor) -> float:
        return float(torch.softmax(logits(x_b + mask * (x - x_b)), 0)[target])

    a = head(x[None]).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(tail(a)[0, target], a)
    a, g = a[0].detach(), g[0]
    l_grad = n(up(torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0))))
    tau = float(np.percentile(l_grad.numpy().astype(np.float64), theta))
    l_den = n(l_grad * (l_grad >= tau))
    scores = torch.stack([logits(x_b + n(up(a[k])) * (x - x_b))[target] for k in range(a.shape[0])])
    alpha = torch.softmax(scores, 0)
    l_reg = n(torch.relu(sum(alpha[k] * up(a[k]) for k in range(a.shape[0]))))
    p_b = prob(torch.zeros(size))
    beta_den, beta_reg = prob(l_den) - p_b, prob(l_reg) - p_b
    if mode == "raw":
        den_hat, reg_hat = beta_den, beta_reg
    else:
        den_hat, reg_hat = beta_den / (beta_den + beta_reg + eps), beta_reg / (beta_den + beta_reg + eps)
    l_comb = n(den_hat * l_den + reg_hat * l_reg)
    beta_comb = prob(l_comb) - p_b
    if mode == "reference":
        gamma1, gamma2 = beta_comb / (beta_comb + reg_hat + eps), reg_hat / (beta_comb + reg_hat + eps)
    elif mode == "normalized":
        gamma1, gamma2 = beta_comb / (beta_comb + beta_reg + eps), beta_reg / (beta_comb + beta_reg + eps)
    else:
        gamma1, gamma2 = beta_comb, beta_reg
    l1, l2 = gamma1 * l_comb, gamma2 * l_reg
    s = torch.clamp(1 - strength * (l1 - l2).abs(), 0, 1)
    fused = n(s * torch.maximum(l1, l2) + (1 - s) * (l1 + l2) / 2)
    maps = {"gradcam": l_grad, "denoised": l_den, "scorecam": l_reg, "combined": l_comb, "fusion": fused,
            "agreement": s}
    return {k: v.numpy() for k, v in maps.items()}, {"denoised": beta_den, "region": beta_reg, "combined": beta_comb}


def plain_baseline(x: torch.Tensor, kind: str, model: LoadedModel) -> torch.Tensor:
    """``x_b`` written out: 0, black ``(0 − mean) / std``, or torchvision's Gaussian blur (kernel 51, σ 50)."""
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "black":
        return (-torch.tensor(model.mean) / torch.tensor(model.std))[:, None, None].expand_as(x).clone()
    return gaussian_blur(x[None], [51, 51], [50.0, 50.0])[0]


def assert_matches_plain(exp: Explanation, plain: tuple[dict[str, np.ndarray], dict[str, float]]) -> None:
    maps, betas = plain
    for name, expected in maps.items():
        np.testing.assert_allclose(exp.maps[name], expected, atol=2e-5, err_msg=name)
    for name, beta in betas.items():
        assert exp.report["betas"][name] == pytest.approx(beta, abs=1e-6), name


@pytest.mark.parametrize("baseline", ["mean", "black", "blur"])
@pytest.mark.parametrize("mode", ["reference", "normalized", "raw"])
def test_every_weight_mode_and_baseline_equals_a_plain_transcription(tiny_model: LoadedModel,
                                                                    tiny_image: np.ndarray, mode: str,
                                                                    baseline: str) -> None:
    module = tiny_model.module
    exp = explain(tiny_model, tiny_image, weights=mode, baseline=baseline, theta=20, strength=1.5)
    x = exp.evidence.x

    def head(image: torch.Tensor) -> torch.Tensor:
        return module.features(torch.relu(module.stem(image)))

    def tail(a: torch.Tensor) -> torch.Tensor:
        return module.fc(module.pool(torch.relu(a)).flatten(1))

    plain = plain_fusion_cam(head, tail, x, plain_baseline(x, baseline, tiny_model), exp.evidence.target, mode,
                             theta=20, strength=1.5)
    assert_matches_plain(exp, plain)


class Inverted(nn.Module):
    """Scores class 0 highest on the featureless baseline: every masked input has β < 0."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.features = nn.Conv2d(3, 4, 3, stride=2)
        with torch.no_grad():
            for parameter in self.features.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        energy = a.abs().mean(dim=(1, 2, 3))
        return torch.stack([-energy, energy], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.features(x))


def test_the_negative_scale_path_of_the_combined_map_cache_equals_a_plain_transcription(
        tiny_image: np.ndarray) -> None:
    """β_den + β_reg < 0: reference and normalized flip the combined map's sign, raw does not.
    Re-fusing one evidence across the modes must score each combined map, not reuse another's."""
    module = Inverted()
    model = LoadedModel.from_module(module, input_size=(32, 32), class_names=["low", "high"],
                                    default_layer="features")
    first = explain(model, tiny_image, target=0)
    assert first.report["betas"]["denoised"] + first.report["betas"]["region"] < 0
    x, x_b = first.evidence.x, first.evidence.baseline
    before = model.forwarded_images
    first.refuse(weights="normalized")
    assert model.forwarded_images == before            # the same sign as reference: its combined map is known
    first.refuse(weights="raw")
    assert model.forwarded_images - before == 1        # the other sign: its combined map is scored once
    for mode in ("raw", "normalized", "reference", "raw"):
        again = first.refuse(weights=mode)
        assert_matches_plain(again, plain_fusion_cam(module.features, module.tail, x, x_b, 0, mode))
        assert all(np.isfinite(m).all() for m in again.maps.values())
        assert any("Unreliable weights" in w for w in again.report["warnings"])
    raw, reference = first.refuse(weights="raw").maps["combined"], first.maps["combined"]
    assert not np.allclose(raw, reference)          # the two signs really give two combined maps
