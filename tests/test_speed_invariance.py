"""Speed options must not change answers: chunk size, memory layout, and precision off by default."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from fusioncam import LoadedModel, load_model
from fusioncam.backend import GPU_MAX_CHUNK, auto_chunk_size, check_precision, prefers_channels_last
from fusioncam.explain import GradientEvidence, capture_evidence, explain
from fusioncam.images import load_image
from fusioncam.region import RegionScores, iter_channel_scores, region_map, score_channels


def _score(model: LoadedModel | nn.Module, evidences: list[GradientEvidence], chunk_size: int,
           **options: object) -> tuple[RegionScores, torch.Tensor]:
    """Score-CAM scores and region maps for ``evidences`` (one batch, images mixed in chunks)."""
    x = torch.stack([e.x for e in evidences])
    activations = torch.stack([e.activations for e in evidences])
    region = score_channels(model, x, torch.stack([e.baseline for e in evidences]), activations,
                            torch.tensor([e.target for e in evidences]), chunk_size, **options)
    return region, region_map(activations, region.scores, tuple(x.shape[-2:]))


@pytest.fixture
def tiny_evidence(tiny_model: LoadedModel, tiny_image: np.ndarray) -> list[GradientEvidence]:
    """Two images (the fixture and its mirror) so that chunks cross image boundaries."""
    images = [load_image(tiny_image), load_image(np.ascontiguousarray(tiny_image[:, ::-1]))]
    return capture_evidence(tiny_model, images, target=[1, 3])


def test_chunk_size_does_not_change_the_map(tiny_model: LoadedModel, tiny_evidence: list[GradientEvidence]) -> None:
    reference, reference_map = _score(tiny_model, tiny_evidence, chunk_size=1)
    assert int(reference.masked_passes.sum()) > 7          # chunk 7 really splits the work
    for chunk in (7, 64):
        region, cam = _score(tiny_model, tiny_evidence, chunk_size=chunk)
        torch.testing.assert_close(region.scores, reference.scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cam, reference_map, rtol=1e-5, atol=1e-5)
        assert torch.equal(region.masked_passes, reference.masked_passes)


def test_channels_last_gives_the_same_map(tiny_model: LoadedModel, tiny_evidence: list[GradientEvidence]) -> None:
    assert not prefers_channels_last(tiny_model)
    reference, reference_map = _score(tiny_model, tiny_evidence, chunk_size=7)
    as_channels_last, _ = _score(tiny_model, tiny_evidence, chunk_size=7, channels_last=True)
    torch.testing.assert_close(as_channels_last.scores, reference.scores, rtol=1e-5, atol=1e-5)

    tiny_model.to("cpu", channels_last=True)
    assert prefers_channels_last(tiny_model)
    for layout in (None, False):            # None: the buffer follows the model (channels_last)
        region, cam = _score(tiny_model, tiny_evidence, chunk_size=7, channels_last=layout)
        torch.testing.assert_close(region.scores, reference.scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cam, reference_map, rtol=1e-5, atol=1e-5)


class _AutocastSpy(nn.Module):
    """Wraps a network and records whether CPU autocast was on in each forward."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.autocast_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return self.network(x)


def test_reduced_precision_is_off_by_default(tiny_model: LoadedModel, tiny_evidence: list[GradientEvidence]) -> None:
    assert inspect.signature(iter_channel_scores).parameters["precision"].default == "fp32"   # score_channels' too
    assert inspect.signature(explain).parameters["precision"].default == "fp32"
    assert inspect.signature(auto_chunk_size).parameters["precision"].default == "fp32"
    spy = _AutocastSpy(tiny_model.module)
    _score(spy, tiny_evidence, chunk_size=7)
    assert spy.autocast_seen and not any(spy.autocast_seen)

    spy.autocast_seen.clear()
    region, _ = _score(spy, tiny_evidence, chunk_size=7, precision="bf16")
    assert spy.autocast_seen[0] is False and all(spy.autocast_seen[1:])   # baseline pass stays fp32
    assert region.scores.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("int8")


@pytest.mark.parametrize(("free_bytes", "chunk"), [(1e9, 4), (3.3e9, 16), (1e12, GPU_MAX_CHUNK)])
def test_gpu_chunk_is_a_power_of_two(monkeypatch: pytest.MonkeyPatch, free_bytes: float, chunk: int) -> None:
    """Free memory differs between requests (7 and 25 fit here); a power of two keeps the compiled
    scoring network to a few graph shapes."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(free_bytes), int(free_bytes)))
    assert auto_chunk_size(torch.device("cuda"), (3, 224, 224)) == chunk


@pytest.mark.slow
def test_bundled_model_layout_and_chunk_invariance(bundled_model: LoadedModel, cat_path) -> None:
    """The real network on a smaller layer: channels_last at chunk 8 vs the default layout at chunk 64."""
    evidence = capture_evidence(bundled_model, [load_image(cat_path)], layer="blocks.5")
    reference, reference_map = _score(bundled_model, evidence, chunk_size=8)
    plain = load_model("efficientnet_lite0", device="cpu", channels_last=False)
    assert prefers_channels_last(bundled_model) and not prefers_channels_last(plain)
    region, cam = _score(plain, evidence, chunk_size=64)
    torch.testing.assert_close(region.scores, reference.scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cam, reference_map, rtol=1e-4, atol=1e-4)
