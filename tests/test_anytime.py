"""Anytime Score-CAM (METHOD.md "Partial Score-CAM"): partial records in scoring order, each one the
partial formula, the last one exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam import LoadedModel
from fusioncam.explain import (
    FusionParams,
    capture_evidence,
    derive,
    iter_regions,
    score_regions,
)
from fusioncam.fusion import normalize, upsample
from fusioncam.images import load_image
from fusioncam.ordering import channel_priority
from fusioncam.region import flat_channels


def test_partial_records_follow_the_order_and_the_last_is_exact(tiny_model: LoadedModel,
                                                              tiny_image: np.ndarray) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    [exact] = score_regions(tiny_model, [evidence], chunk_size=4)
    updates = [records[0] for records in iter_regions(tiny_model, [evidence], chunk_size=2, stops=(0.3,))]
    fractions = [u.scored_fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 1
    assert [u.final for u in updates] == [False] * (len(updates) - 1) + [True]
    torch.testing.assert_close(updates[-1].region_scores, exact.region_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(updates[-1].region_map(), exact.region_map(), atol=1e-5, rtol=0)

    # Each partial record is the partial formula: channels scored so far keep their exact score,
    # the others −inf, in the order of their priority (the most telling first).
    flat = flat_channels(evidence.activations[None])[0]
    priority = channel_priority(evidence.activations[None], evidence.gradients[None])[0]
    order = [k for k in torch.sort(priority, descending=True, stable=True).indices.tolist() if not flat[k]]
    for update in updates:
        known = round(update.scored_fraction * len(order))
        scored = set(order[:known])
        for k in range(len(flat)):
            if flat[k] or k in scored:
                assert update.region_scores[k] == pytest.approx(float(exact.region_scores[k]), abs=1e-5)
            else:
                assert update.region_scores[k] == float("-inf")
        assert update.masked_passes == known


def test_partial_region_map_is_score_cams_formula_over_the_channels_known(tiny_model: LoadedModel,
                                                                         tiny_image: np.ndarray) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    partial = next(iter(iter_regions(tiny_model, [evidence], chunk_size=1)))[0]
    known = torch.isfinite(partial.region_scores)
    alpha = torch.softmax(partial.region_scores[known], dim=0)
    cam = (alpha[:, None, None] * evidence.activations[known]).sum(0)
    expected = normalize(upsample(cam[None, None], tuple(evidence.x.shape[-2:]))[0, 0].clamp(min=0))
    torch.testing.assert_close(partial.region_map(), expected, atol=1e-6, rtol=0)


def test_a_stop_yields_a_result_however_large_the_chunk(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    updates = [records[0] for records in iter_regions(tiny_model, [evidence], chunk_size=64, stops=(0.05, 0.25))]
    assert len(updates) >= 3, "two stops must cut the one chunk into three"
    assert all(not u.final for u in updates[:-1]) and updates[-1].final


def test_partial_explanations_report_their_progress(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    reports = [derive(tiny_model, records, FusionParams())[0].report
               for records in iter_regions(tiny_model, [evidence], chunk_size=3)]
    fractions = [r["progress"]["scorecam_fraction"] for r in reports]
    assert all(0 < f < 1 for f in fractions[:-1]) and fractions == sorted(fractions)
    assert reports[-1]["progress"] == {"scorecam_fraction": 1.0, "final": True}
    assert not any(r["progress"]["final"] for r in reports[:-1])


def test_a_batch_progresses_evenly(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    images = [load_image(tiny_image), load_image(np.ascontiguousarray(tiny_image[::-1]))]
    evidences = capture_evidence(tiny_model, images)
    first = next(iter(iter_regions(tiny_model, evidences, chunk_size=2)))
    assert [r.masked_passes for r in first] == [1, 1]   # rank by rank: one channel of each image first
