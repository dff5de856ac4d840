"""The compiled scoring network (fusioncam/compiled.py): the same maps as eager, built once per shape off
the request path, reused for every image, dropped with the model, and never failing a request."""

from __future__ import annotations

import gc
import inspect
import logging
import os
import sys
import threading
import types
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import TinyNet
from torch._dynamo.utils import counters

from fusioncam import LoadedModel, load_model
from fusioncam.compiled import compile_blocker
from fusioncam.explain import capture_evidence
from fusioncam.images import load_image
from fusioncam.metrics import score_maps
from fusioncam.region import region_map, score_channels

CHUNK = 7


class CountingNet(TinyNet):
    """TinyNet that counts its eager forwards; code compiled by dynamo skips the count, so a call
    served by the graph leaves it unchanged (the count is shared with the private traced copy)."""

    eager_forwards: ClassVar[list[int]] = [0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            CountingNet.eager_forwards[0] += 1
        return super().forward(x)


class BranchingNet(TinyNet):
    """A branch on a tensor's value: dynamo cannot capture this forward as one graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits if logits.sum() > 0 else -logits


def _wrap(module: torch.nn.Module, compile: bool) -> LoadedModel:
    return LoadedModel.from_module(module, name=type(module).__name__, input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                                   std=(0.25, 0.25, 0.25), class_names=[f"c{i}" for i in range(5)],
                                   default_layer="features", compile=compile)


@pytest.fixture
def compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compilation allowed in this process (tests/conftest.py turns it off for every other test)."""
    monkeypatch.delenv("FUSIONCAM_COMPILE", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert compile_blocker() is None


def _region(model: LoadedModel, evidences: list, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([e.x for e in evidences])
    activations = torch.stack([e.activations for e in evidences])
    region = score_channels(model, x, torch.stack([e.baseline for e in evidences]), activations,
                            torch.tensor([e.target for e in evidences]), chunk)
    return region.scores, region_map(activations, region.scores, tuple(x.shape[-2:]))


def test_compiled_maps_equal_eager_and_one_graph_serves_every_image(compiling: None, tiny_image: np.ndarray) -> None:
    eager, model = _wrap(TinyNet(), compile=False), _wrap(CountingNet(), compile=True)   # equal weights
    images = [load_image(tiny_image), load_image(np.ascontiguousarray(tiny_image[:, ::-1]))]
    evidences = capture_evidence(eager, images, target=[1, 3])
    expected = [_region(eager, evidences), _region(eager, evidences[:1]), _region(eager, evidences[1:])]

    # Four requests at once: all answered eagerly while exactly one compilation starts.
    answers: list[tuple[torch.Tensor, torch.Tensor]] = []
    threads = [threading.Thread(target=lambda: answers.append(_region(model, evidences))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and model.scorers.builds_started == 1
    for _scores, cam in answers:
        torch.testing.assert_close(cam, expected[0][1], rtol=0, atol=1e-6)
    assert model.scorers.wait(timeout=300), "the compilation did not finish"
    assert model.scorers.failure is None and len(model.scorers.ready) == 1
    assert model.scorers.ready[0].shape == (CHUNK, 3, 32, 32)

    # Ready: both images together and each alone (other last-chunk sizes, padded) and the metrics'
    # scoring passes (same chunk) all run through the one graph — no recompilation, no eager
    # forward but the baseline pass of each Score-CAM call — with the eager answers to 1e-4.
    graphs, forwards = counters["stats"]["unique_graphs"], CountingNet.eager_forwards[0]
    for subset, (scores, cam) in zip((evidences, evidences[:1], evidences[1:]), expected, strict=True):
        got_scores, got_cam = _region(model, subset)
        assert (got_cam - cam).abs().max().item() <= 1e-4
        assert (got_scores - scores).abs().max().item() <= 1e-4
    e = evidences[0]
    maps = {"cam": expected[1][1][0], "flat": torch.full((32, 32), 0.5)}
    compiled_scores = score_maps(model, e.x, maps, e.target, e.baseline, n_steps=4, chunk_size=CHUNK)
    eager_scores = score_maps(eager, e.x, maps, e.target, e.baseline, n_steps=4, chunk_size=CHUNK)
    for name in maps:
        assert np.abs(compiled_scores[name].deletion - eager_scores[name].deletion).max() <= 1e-4
        assert np.abs(compiled_scores[name].insertion - eager_scores[name].insertion).max() <= 1e-4
    assert CountingNet.eager_forwards[0] - forwards == 3             # the three baseline passes
    assert counters["stats"]["unique_graphs"] == graphs
    assert model.scorers.builds_started == 1

    # Four requests at once through the ready graph.
    answers.clear()
    threads = [threading.Thread(target=lambda: answers.append(_region(model, evidences))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and CountingNet.eager_forwards[0] - forwards == 7
    for _scores, cam in answers:
        assert (cam - expected[0][1]).abs().max().item() <= 1e-4

    # Weights changed in place after the copy was compiled: eager from then on, never the old weights.
    with torch.no_grad():
        model.module.fc.weight.mul_(-1)
        eager.module.fc.weight.mul_(-1)
    torch.testing.assert_close(_region(model, evidences)[1], _region(eager, evidences)[1], rtol=0, atol=1e-6)
    assert "weights changed" in model.scorers.failure and not model.scorers.ready

    # Dropped with the model: neither the network nor its traced copy outlives it.
    model = None
    answers.clear()
    gc.collect()
    assert not any(type(o) is CountingNet for o in gc.get_objects())


def test_a_model_that_cannot_compile_runs_eager_with_one_log_line(compiling: None,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    model, eager = _wrap(BranchingNet(), compile=True), _wrap(BranchingNet(), compile=False)
    batch = torch.randn(3, 3, 32, 32)
    caplog.set_level(logging.WARNING, logger="fusioncam.compiled")
    expected = eager.score(batch)
    torch.testing.assert_close(model.score(batch, pad_to=4), expected)
    assert model.scorers.wait(timeout=300)
    for pad in (4, 8, None):
        torch.testing.assert_close(model.score(batch, pad_to=pad), expected)
    assert model.scorers.failure and not model.scorers.ready and model.scorers.builds_started == 1
    assert len([r for r in caplog.records if r.name == "fusioncam.compiled"]) == 1


@pytest.mark.parametrize("switch", ["compile=False", "FUSIONCAM_COMPILE=0", "SPACES_ZERO_GPU=1", "spaces.zero_gpu"])
def test_no_compile_thread_when_off(compiling: None, switch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if switch.startswith(("FUSIONCAM", "SPACES")):
        monkeypatch.setenv(*switch.split("="))
    if switch == "spaces.zero_gpu":
        fake = types.ModuleType("spaces")
        fake.config = types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True))
        monkeypatch.setitem(sys.modules, "spaces", fake)
    model = _wrap(TinyNet(), compile=switch != "compile=False")
    batch = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = model.module(batch)
    torch.testing.assert_close(model.score(batch, pad_to=4), expected)
    assert model.scorers.builds_started == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("fusioncam-compile")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_process_never_compiles(compiling: None) -> None:
    pid = os.fork()
    if pid == 0:                                       # the child: only report, run no torch op
        os._exit(0 if compile_blocker() == "a forked process" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert compile_blocker() is None


def test_compile_is_on_by_default_and_opt_out_is_kept(tiny_model: LoadedModel) -> None:
    assert inspect.signature(load_model).parameters["compile"].default is True
    assert tiny_model.compile is True
    assert load_model(tiny_model, device="cpu", compile=False).compile is False
    assert _wrap(TinyNet(), compile=False).compile is False
