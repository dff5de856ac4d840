"""Faithfulness metrics against hand-computed cases, and batched scoring against one-by-one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fusioncam import LoadedModel, explain
from fusioncam.baselines import apply_mask, blurred
from fusioncam.metrics import (
    auc,
    average_drop,
    increase_in_confidence,
    pixel_order,
    score_maps,
    step_counts,
)

SIDE = 8
HOT = torch.zeros(SIDE, SIDE, dtype=torch.bool)
HOT[2:4, :] = True             # 16 "evidence" pixels: rows 2 and 3


class MassModel(nn.Module):
    """Two classes with ``p_0 = q``: the share of the evidence mass left in channel 0 over ``HOT``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = (self.features(x)[:, 0] * HOT).sum((1, 2)) / HOT.sum()
        q = q.clamp(1e-7, 1 - 1e-7)
        return torch.stack([q.log(), (1 - q).log()], dim=1)


@pytest.fixture
def mass_model() -> LoadedModel:
    return LoadedModel.from_module(MassModel(), name="mass", input_size=(SIDE, SIDE), mean=(0.5,) * 3,
                                   std=(0.5,) * 3, class_names=["evidence", "rest"], default_layer="features")


@pytest.fixture
def evidence_image() -> torch.Tensor:
    """1 on the evidence pixels of channel 0, 0 (the mean baseline) elsewhere."""
    x = torch.zeros(3, SIDE, SIDE)
    x[0][HOT] = 1.0
    return x


def test_auc_is_the_trapezoid_rule_on_the_unit_interval() -> None:
    assert auc([0.0, 1.0]) == pytest.approx(0.5)
    assert auc(np.linspace(1, 0, 113)) == pytest.approx(0.5)
    assert auc([1.0, 0.5, 0.0, 0.0, 0.0]) == pytest.approx((0.75 + 0.25) / 4)
    with pytest.raises(ValueError):
        auc([1.0])


def test_dataset_formulas() -> None:
    assert average_drop([0.5, 0.5], [0.6, 0.25]) == pytest.approx(25.0)       # 100 · mean(0, 0.5)
    assert increase_in_confidence([0.5, 0.5], [0.6, 0.25]) == pytest.approx(50.0)


def test_average_drop_counts_an_image_with_zero_probability_as_no_drop() -> None:
    with np.errstate(all="raise"):                      # no 0/0 on the way
        assert average_drop([0.5, 0.0], [0.25, 0.0]) == pytest.approx(25.0)   # 100 · mean(0.5, 0)
        assert average_drop([0.0], [0.3]) == 0.0


def test_steps_and_ordering() -> None:
    assert step_counts(224 * 224, 112)[1] == 448
    assert step_counts(224 * 224, 112)[-1] == 224 * 224
    assert step_counts(10, 4).tolist() == [0, 2, 5, 7, 10]
    with pytest.raises(ValueError):
        step_counts(10, 0)
    ties = torch.tensor([[0.5, 1.0, 0.5], [1.0, 0.0, 0.5]])
    assert pixel_order(ties).tolist() == [1, 3, 0, 2, 5, 4]       # stable: ties stay in raster order


def test_a_map_of_ones_drops_nothing(mass_model: LoadedModel, evidence_image: torch.Tensor) -> None:
    scores = score_maps(mass_model, evidence_image, {"ones": torch.ones(SIDE, SIDE)}, 0,
                        torch.zeros(3, SIDE, SIDE), n_steps=8)["ones"]
    assert scores.masked_probability == pytest.approx(scores.probability)
    assert scores.drop == pytest.approx(0.0, abs=1e-6)
    assert average_drop([scores.probability], [scores.masked_probability]) == pytest.approx(0.0, abs=1e-4)


def test_a_map_of_zeros_gives_the_baseline_probability(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image, baseline="black")
    x, xb, c = exp.evidence.x, exp.evidence.baseline, exp.evidence.target
    scores = score_maps(tiny_model, x, {"zeros": np.zeros((32, 32), np.float32)}, c, xb, n_steps=4)["zeros"]
    with torch.inference_mode():
        expected = torch.softmax(tiny_model.module(torch.stack([x, xb])), dim=1)[:, c]
    assert scores.probability == pytest.approx(float(expected[0]), abs=1e-6)
    assert scores.masked_probability == pytest.approx(float(expected[1]), abs=1e-6)
    assert scores.masked_probability == pytest.approx(exp.evidence.baseline_probability, abs=1e-6)


def test_half_a_map_halves_a_linear_evidence(mass_model: LoadedModel, evidence_image: torch.Tensor) -> None:
    scores = score_maps(mass_model, evidence_image, {"half": torch.full((SIDE, SIDE), 0.5)}, 0,
                        torch.zeros(3, SIDE, SIDE), n_steps=8)["half"]
    assert scores.masked_probability == pytest.approx(0.5, abs=1e-5)
    assert scores.drop == pytest.approx(0.5, abs=1e-5)
    assert not scores.increase


def test_a_perfect_ordering_gives_the_expected_curves(mass_model: LoadedModel,
                                                      evidence_image: torch.Tensor) -> None:
    perfect = HOT.float()                          # the 16 evidence pixels first (64 pixels, 8 per step)
    worst = 1 - HOT.float()                        # the 48 others first
    scores = score_maps(mass_model, evidence_image, {"perfect": perfect, "worst": worst}, 0,
                        torch.zeros(3, SIDE, SIDE), n_steps=8)
    # Deletion of the perfect order: p = 1, 1/2, then 0 → AUC = (0.75 + 0.25) / 8.
    np.testing.assert_allclose(scores["perfect"].deletion, [1, 0.5] + [0] * 7, atol=1e-5)
    assert scores["perfect"].deletion_auc == pytest.approx(1 / 8, abs=1e-5)
    # The worst order deletes evidence only in the last two steps: AUC = (6 + 0.75 + 0.25) / 8.
    assert scores["worst"].deletion_auc == pytest.approx(7 / 8, abs=1e-5)
    # Insertion of the perfect order: start from the blur's evidence mass, put 8 true pixels back per step.
    blur = blurred(evidence_image[None])[0, 0][HOT]          # raster order = the stable order of ties
    expected = [(min(8 * i, 16) + blur[min(8 * i, 16):].sum().item()) / 16 for i in range(9)]
    np.testing.assert_allclose(scores["perfect"].insertion, expected, atol=1e-5)
    assert scores["perfect"].insertion[-1] == pytest.approx(1.0, abs=1e-5)
    assert scores["perfect"].insertion_auc > scores["worst"].insertion_auc


def test_batched_equals_one_by_one(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image)
    x, xb, c = exp.evidence.x, exp.evidence.baseline, exp.evidence.target
    maps = {name: exp.maps[name] for name in ("gradcam", "scorecam", "fusion")}
    batched = score_maps(tiny_model, x, maps, c, xb, n_steps=10, chunk_size=7)
    single = score_maps(tiny_model, x, maps, c, xb, n_steps=10, chunk_size=1)
    start = blurred(x[None])[0]
    for name, saliency in maps.items():
        for other in (single[name], batched[name]):
            assert other.probability == pytest.approx(single[name].probability, abs=1e-6)
            assert other.masked_probability == pytest.approx(single[name].masked_probability, abs=1e-6)
        np.testing.assert_allclose(batched[name].deletion, single[name].deletion, atol=1e-6)
        np.testing.assert_allclose(batched[name].insertion, single[name].insertion, atol=1e-6)
        # An independent one-forward-per-step loop over the same ordering.
        order = np.argsort(-saliency.ravel(), kind="stable")
        deletion, insertion = [], []
        for k in step_counts(saliency.size, 10).tolist():
            first = torch.zeros(saliency.size)
            first[torch.from_numpy(order[:k])] = 1.0
            first = first.view(saliency.shape)
            with torch.inference_mode():
                deletion.append(torch.softmax(tiny_model.module(apply_mask(x[None], xb[None], 1 - first[None])),
                                              1)[0, c].item())
                insertion.append(torch.softmax(tiny_model.module(apply_mask(x[None], start[None], first[None])),
                                               1)[0, c].item())
        np.testing.assert_allclose(batched[name].deletion, deletion, atol=1e-6)
        np.testing.assert_allclose(batched[name].insertion, insertion, atol=1e-6)


def test_forward_count_progress_and_determinism(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image)
    maps = {"gradcam": exp.maps["gradcam"], "fusion": exp.maps["fusion"]}
    calls: list[tuple[int, int]] = []
    before = tiny_model.forwarded_images
    first = score_maps(tiny_model, exp.evidence.x, maps, exp.evidence.target, exp.evidence.baseline, n_steps=6,
                       chunk_size=8, progress=lambda done, total: calls.append((done, total)))
    assert tiny_model.forwarded_images - before == 1 + 2 * (2 * 6 + 3)
    assert calls[-1] == (31, 31) and len(calls) == 4                      # ⌈31 / 8⌉ forwards
    again = score_maps(tiny_model, exp.evidence.x, maps, exp.evidence.target, exp.evidence.baseline, n_steps=6)
    for name in maps:
        assert again[name].deletion_auc == first[name].deletion_auc
        assert again[name].insertion_auc == first[name].insertion_auc
    assert len(first["gradcam"].deletion) == 7
    assert first["gradcam"].deletion[0] == pytest.approx(first["gradcam"].probability, abs=1e-6)
    assert first["gradcam"].insertion[-1] == pytest.approx(first["gradcam"].probability, abs=1e-6)


def test_bad_arguments(tiny_model: LoadedModel) -> None:
    x = torch.zeros(3, 32, 32)
    with pytest.raises(ValueError, match="no maps"):
        score_maps(tiny_model, x, {}, 0, x)
    with pytest.raises(ValueError, match="do not match"):
        score_maps(tiny_model, x, {"small": torch.zeros(8, 8)}, 0, x)
    with pytest.raises(ValueError, match="steps"):
        score_maps(tiny_model, x, {"ok": torch.zeros(32, 32)}, 0, x, n_steps=0)


def test_the_app_view_scores_every_map_shown(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    from fusioncam.ui.faithfulness import HEADERS, score_explanation

    exp = explain(tiny_model, tiny_image, gradient_method="xgradcam")
    seen: list[float] = []
    view = score_explanation(exp, extra_methods=["layercam", "xgradcam"], n_steps=5,
                             progress=lambda fraction, _text: seen.append(fraction))
    names = [row[0] for row in view.rows]
    assert names == ["XGrad-CAM", "denoised XGrad-CAM", "Score-CAM", "combined", "Fusion-CAM", "LayerCAM"]
    assert all(len(row) == len(HEADERS) for row in view.rows)
    assert len(view.deletion.data) == len(view.insertion.data) == 6
    assert len(view.deletion.data[0].y) == 6 and seen[-1] == pytest.approx(1.0)
    alone = score_maps(tiny_model, exp.evidence.x, {"fusion": exp.maps["fusion"]}, exp.evidence.target,
                       exp.evidence.baseline, n_steps=5)["fusion"]
    assert view.scores["fusion"].deletion_auc == pytest.approx(alone.deletion_auc, abs=1e-6)
    with pytest.raises(ValueError, match="unknown gradient method"):
        score_explanation(exp, extra_methods=["nope"])
