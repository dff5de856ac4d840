"""ROAD (METHOD.md "ROAD"): the imputation on images with a known answer, the metric's bookkeeping
on a tiny model, and equality with pytorch-grad-cam's ROAD on the bundled model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fusioncam import LoadedModel, fusion
from fusioncam.explain import capture_evidence
from fusioncam.images import load_image
from fusioncam.imputation import impute
from fusioncam.metrics import ROAD_PERCENTILES, protocol_card, road, road_removed


def linear_image(height: int = 12, width: int = 14) -> torch.Tensor:
    """Each channel an affine function of (row, column): linear imputation must give it back."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([0.3 * rows - 0.2 * cols + 1, -0.1 * rows + 0.05 * cols, 0.7 * cols - 2])


def test_imputation_restores_an_affine_image_inside_the_border() -> None:
    image = linear_image()
    removed = np.zeros((12, 14), dtype=bool)
    removed[2:9, 3:11] = True                  # a block ...
    removed[9, 5] = removed[4, 12] = True      # ... and pixels touching it or alone
    scrambled = image.clone()
    scrambled[:, torch.from_numpy(removed)] = 99.0     # the removed values must not matter
    filled = impute(scrambled, removed)
    torch.testing.assert_close(filled, image, atol=1e-5, rtol=0)


def test_neighbours_outside_the_image_drop_out_of_the_weighted_mean() -> None:
    image = torch.arange(3 * 4 * 5, dtype=torch.float32).view(3, 4, 5) ** 1.5
    removed = np.zeros((4, 5), dtype=bool)
    removed[0, 0] = True                       # a corner: 2 edge neighbours (1/6) and 1 diagonal (1/12)
    expected = (image[:, 0, 1] / 6 + image[:, 1, 0] / 6 + image[:, 1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    filled = impute(image, removed)
    torch.testing.assert_close(filled[:, 0, 0], expected)
    assert torch.equal(filled[:, ~torch.from_numpy(removed)], image[:, ~torch.from_numpy(removed)])


def test_nothing_kept_gives_the_mean_colour_and_nothing_removed_changes_nothing() -> None:
    image = linear_image()
    assert torch.equal(impute(image, np.ones((12, 14), dtype=bool)), torch.zeros_like(image))
    assert torch.equal(impute(image, np.zeros((12, 14), dtype=bool)), image)
    with pytest.raises(ValueError, match="does not fit"):
        impute(image, np.zeros((3, 3), dtype=bool))


def test_noise_lands_on_the_removed_pixels_only() -> None:
    image, removed = linear_image(), np.zeros((12, 14), dtype=bool)
    removed[3:9, 3:11] = True
    noise = torch.full_like(image, 0.5)
    difference = impute(image, removed, noise) - impute(image, removed)
    mask = torch.from_numpy(removed)
    assert torch.allclose(difference[:, mask], torch.tensor(0.5)) and torch.equal(difference[:, ~mask],
                                                                                  torch.zeros(3, int((~mask).sum())))


def test_removal_keeps_ties_together() -> None:
    saliency = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 1.0]], dtype=np.float32)
    # MoRF at p = 30: the threshold falls on the tied zeros, so every pixel ≥ 0 goes (all of them).
    assert road_removed(saliency, 30, most_relevant=True).all()
    assert road_removed(saliency, 80, most_relevant=True).tolist() == [[False] * 4, [False, True, True, True]]
    # LeRF at p = 50: 1 − L has five tied ones at the top; all five go, not 50 %.
    assert road_removed(saliency, 50, most_relevant=False).tolist() == [[True] * 4, [True, False, False, False]]


def test_road_bookkeeping_on_a_tiny_model(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    maps = {"gradcam": evidence.gradient_map("gradcam"), "layercam": evidence.gradient_map("layercam").numpy()}
    calls: list[tuple[int, int]] = []
    before = tiny_model.forwarded_images
    scores = road(tiny_model, evidence.x, evidence.target, maps, chunk_size=7,
                  progress=lambda done, total: calls.append((done, total)))
    solves = 2 * len(ROAD_PERCENTILES) * 2
    assert tiny_model.forwarded_images - before == 1 + solves
    assert calls[-1][0] == calls[-1][1] == solves + -(-(solves + 1) // 7)
    again = road(tiny_model, evidence.x, evidence.target, maps)
    for name, score in scores.items():
        assert score.morf.shape == score.lerf.shape == (len(ROAD_PERCENTILES),)
        np.testing.assert_array_equal(score.morf, again[name].morf)          # the seed fixes the noise
        assert score.combined == pytest.approx((score.lerf.mean() - score.morf.mean()) / 2)
    solved = road(tiny_model, evidence.x, evidence.target, maps, solver="torch")
    for name, score in scores.items():                                    # the torch solver, same noise
        np.testing.assert_allclose(solved[name].morf, score.morf, atol=1e-4, rtol=0)
        np.testing.assert_allclose(solved[name].lerf, score.lerf, atol=1e-4, rtol=0)
    noisier = road(tiny_model, evidence.x, evidence.target, maps, seed=1)
    assert not np.array_equal(noisier["gradcam"].morf, scores["gradcam"].morf)
    with pytest.raises(ValueError, match="no maps"):
        road(tiny_model, evidence.x, evidence.target, {})
    with pytest.raises(ValueError, match="do not match"):
        road(tiny_model, evidence.x, evidence.target, {"small": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="noise"):
        road(tiny_model, evidence.x, evidence.target, maps, noise=-1)
    with pytest.raises(ValueError, match="solver"):
        road(tiny_model, evidence.x, evidence.target, maps, solver="lu")


@pytest.mark.parametrize("solver", ["scipy", "torch"])
def test_every_road_forward_is_padded_to_the_chunk(tiny_model: LoadedModel, tiny_image: np.ndarray,
                                                   monkeypatch: pytest.MonkeyPatch, solver: str) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    maps = {m: evidence.gradient_map(m) for m in ("gradcam", "layercam", "xgradcam")}
    calls: list[tuple[int, int | None]] = []
    score = tiny_model.score
    monkeypatch.setattr(tiny_model, "score", lambda batch, pad_to=None, **kw: (calls.append((len(batch), pad_to)),
                                                                                 score(batch, pad_to, **kw))[1])
    road(tiny_model, evidence.x, evidence.target, maps, chunk_size=16, solver=solver)
    images = 1 + 2 * len(ROAD_PERCENTILES) * len(maps)
    assert [rows for rows, _ in calls] == [16] * (images // 16) + [images % 16]       # across maps and steps
    assert {pad for _, pad in calls} == {16}


def test_the_protocol_card_states_the_baseline_and_the_settings() -> None:
    card = protocol_card("black", n_steps=112, size=(224, 224))
    assert "black" in card and "112 steps of 448 pixels" in card and "σ = 0.01" in card
    assert "probabilities" in card and "relative" in card and "kernel 51, σ 50" in card
    assert "ROAD" not in protocol_card(road_noise=None)
    with pytest.raises(ValueError, match="baseline"):
        protocol_card("white")


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["scipy", "torch"])
@pytest.mark.parametrize("kind", ["gradcam", "denoised"])
def test_road_equals_pytorch_grad_cam(bundled_model: LoadedModel, cat_path, kind: str, solver: str) -> None:
    """Noise 0, softmax target; the denoised map at θ = 40 has ~40 % tied zeros, so MoRF at p = 20
    removes every pixel and LeRF at p = 70 removes the whole tie (~40 %, not 30 %)."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    [evidence] = capture_evidence(bundled_model, [load_image(cat_path)])
    saliency = evidence.gradient_map("gradcam")
    if kind == "denoised":
        saliency = fusion.denoise(saliency, 40)[0]
        assert (saliency == 0).float().mean() > 0.39
    saliency = saliency.numpy()
    percentiles = (20, 70) if kind == "denoised" else (30, 90)
    ours = road(bundled_model, evidence.x, evidence.target, {kind: saliency}, percentiles=percentiles, noise=0,
                solver=solver)[kind]
    targets = [ClassifierOutputSoftmaxTarget(evidence.target)]
    for p, morf, lerf in zip(percentiles, ours.morf, ours.lerf, strict=True):
        for removal, value in ((RemoveMostRelevantFirst, morf), (RemoveLeastRelevantFirst, lerf)):
            metric = PerturbationConfidenceMetric(removal(p, NoisyLinearImputer(noise=0)))
            theirs = metric(evidence.x[None], saliency[None], targets, bundled_model.module)[0]
            assert value == pytest.approx(float(theirs), abs=1e-4 if solver == "torch" else 2e-5), (removal.__name__, p)


def test_the_faithfulness_tab_adds_road_and_the_card_of_the_explanations_baseline(
        tiny_model: LoadedModel, tiny_image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio")
    from fusioncam import explain
    from fusioncam.ui import handlers, trust
    from fusioncam.ui.faithfulness import ROAD_HEADERS

    monkeypatch.setattr(trust, "MODELS", SimpleNamespace(get=lambda spec: tiny_model))
    exp = explain(tiny_model, tiny_image, baseline="black")
    session = SimpleNamespace(request=SimpleNamespace(model="tiny"), evidence=exp.evidence, params=exp.params,
                              maps=exp.maps, report=exp.report, explanation=lambda _model: exp,
                              generation=handlers.GENERATIONS.begin(handlers.session_key(None)))
    table, card = trust.road_and_card(session, 16, ["layercam"], True, None, lambda *_a, **_k: None)
    frame = table["value"]
    assert table["visible"] and list(frame.columns) == ROAD_HEADERS
    assert list(frame["Map"]) == ["Grad-CAM", "denoised Grad-CAM", "Score-CAM", "combined", "Fusion-CAM", "LayerCAM"]
    alone = road(tiny_model, exp.evidence.x, exp.evidence.target, {"fusion": exp.maps["fusion"]})["fusion"]
    assert frame["ROAD combined ↑"].iloc[4] == pytest.approx(round(alone.combined, 4))
    assert "black" in card and "16 steps" in card and "ROAD" in card and "c" + str(exp.evidence.target) in card
    hidden, without = trust.road_and_card(session, 16, [], False, None, lambda *_a, **_k: None)
    assert hidden["visible"] is False and "ROAD" not in without and "black" in without
    assert trust.road_and_card(None, 16, [], True, None, lambda *_a, **_k: None)[1] == trust.DEFAULT_CARD


@pytest.mark.slow
def test_the_faithfulness_tab_has_the_road_option_the_table_and_the_card() -> None:
    pytest.importorskip("gradio")
    import app

    config = app.demo.get_config_file()
    props = {c.get("props", {}).get("elem_id"): c.get("props", {}) for c in config["components"]}
    assert {"faithfulness-road", "road-table", "faithfulness-protocol"} <= set(props)
    assert "| Masking baseline |" in props["faithfulness-protocol"]["value"]
