"""The anytime Score-CAM channel orders: shapes, permutations, ties, and hand-checked formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fusioncam.ordering import (
    MASS_WEIGHT,
    ORDERS,
    REFIT_MASS_WEIGHT,
    channel_order,
    channel_priority,
    refit_priority,
)


def _evidence(n: int = 2, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(n, k, 3, 4, generator=generator) * 3
    a[:, 1] = 0.0                                            # a flat channel in every image
    return a, torch.randn(n, k, 3, 4, generator=generator)


def _hand() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1×2 channels: A_0 = [0, 2], A_1 = [3, 1]; G_0 = [1, 1], G_1 = [0, 2].
    P = G_0 A_0 + G_1 A_1 = [0, 4]; m_0 = [0, 1], m_1 = [1, 0]; so T = (4, 0), mean A = (1, 2),
    w = (1, 1)."""
    a = torch.tensor([[[[0.0, 2.0]], [[3.0, 1.0]]]])
    g = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]])
    return a, g


@pytest.mark.parametrize("method", ORDERS)
def test_every_order_is_a_permutation_with_flat_channels_last(method: str) -> None:
    a, g = _evidence()
    priority = channel_priority(a, g, method)
    order = channel_order(a, g, method)
    assert priority.shape == (2, 6) and priority.dtype == torch.float32
    assert torch.isfinite(priority).all()
    assert order.shape == (2, 6) and order.dtype == torch.long
    assert torch.equal(order.sort(dim=1).values, torch.arange(6).expand(2, 6))
    assert (order[:, -1] == 1).all()                          # the flat channel needs no pass: last
    assert torch.equal(order, channel_order(a.clone(), g.clone(), method))


def test_hand_checked_priorities() -> None:
    a, g = _hand()
    assert channel_priority(a, g, "gradcam").tolist() == [[1.0, 1.0]]
    assert channel_priority(a, g, "contribution").tolist() == [[1.0, 2.0]]
    assert channel_priority(a, g, "mass").tolist() == [[1.0, 2.0]]
    assert channel_priority(a, g, "peak").tolist() == [[2.0, 3.0]]
    assert channel_priority(a, g, "taylor").tolist() == [[4.0, 0.0]]
    expected = [4.0 + MASS_WEIGHT * math.log(1.0), 0.0 + MASS_WEIGHT * math.log(2.0)]
    assert channel_priority(a, g, "taylor_mass")[0].tolist() == pytest.approx(expected)
    assert channel_order(a, g, "taylor").tolist() == [[0, 1]]
    assert channel_order(a, g, "mass").tolist() == [[1, 0]]


def test_ties_go_by_channel_index() -> None:
    a, g = _hand()
    assert channel_order(a, g, "gradcam").tolist() == [[0, 1]]          # w = (1, 1): a tie
    same = torch.ones(1, 3000, 2, 2).cumsum(-1)                         # identical channels…
    same[:, ::3] *= 2                                                   # …in two groups
    expected = [*range(0, 3000, 3), *(k for k in range(3000) if k % 3)]
    assert channel_order(same, torch.ones_like(same), "mass").tolist() == [expected]


def test_refit_recovers_a_score_that_is_linear_in_the_taylor_estimate() -> None:
    a, g = _evidence(n=1, k=40, seed=3)
    taylor = channel_priority(a, g, "taylor")
    scores = 1.5 + 2.0 * taylor                    # b = (1.5, 2), no residual: Q = 0
    scored = torch.zeros_like(scores, dtype=torch.bool)
    scored[0, :20] = True
    expected = scores + REFIT_MASS_WEIGHT * a.mean(dim=(-2, -1)).log()
    refit = refit_priority(a, g, scores, scored)
    non_flat = torch.arange(40) != 1
    assert refit[0, non_flat].tolist() == pytest.approx(expected[0, non_flat].tolist(), abs=1e-4)


def test_refit_keeps_the_static_priority_until_two_channels_are_scored() -> None:
    a, g = _evidence()
    scored = torch.zeros(2, 6, dtype=torch.bool)
    scored[0, 0] = True
    scored[0, 1] = True                            # flat: does not count
    refit = refit_priority(a, g, torch.randn(2, 6), scored)
    assert torch.allclose(refit, channel_priority(a, g))


def test_bad_input_is_one_clear_error() -> None:
    a, g = _evidence()
    with pytest.raises(ValueError, match="unknown channel order"):
        channel_priority(a, g, "random")
    with pytest.raises(ValueError, match="N×K×h×w"):
        channel_order(a, g[:, :3])
    with pytest.raises(ValueError, match="N×K"):
        refit_priority(a, g, torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.bool))
