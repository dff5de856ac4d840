"""The GPU rules, checked on the CPU: fixed input shapes, exact fp32 (TF32 off, the caller's flags
kept), refusals before any work, the out-of-memory fallback, and a batch equal to one-by-one runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fusioncam import LoadedModel, explain
from fusioncam.backend import check_chunk, check_precision, math_mode
from fusioncam.explain import MAP_NAMES
from tests.conftest import TinyNet


class GatedNet(torch.nn.Module):
    """conv → ReLU → conv → ReLU (``gate``, 16 channels, biased down so that which channels are flat
    — all zero — depends on the image) → pool → fc: images need different numbers of masked passes."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.features = torch.nn.Conv2d(6, 16, 3, stride=2, padding=1)
        self.gate = torch.nn.ReLU()
        self.fc = torch.nn.Linear(16, 5)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            self.features.bias -= 6.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.features(torch.relu(self.stem(x))))
        return self.fc(x.mean(dim=(-2, -1)))


@pytest.fixture
def gated_model() -> LoadedModel:
    return LoadedModel.from_module(GatedNet(), name="gated", input_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                                   class_names=[f"c{i}" for i in range(5)], default_layer="gate", compile=False)


def _shapes_of(model: LoadedModel) -> tuple[list[tuple[int, ...]], torch.utils.hooks.RemovableHandle]:
    seen: list[tuple[int, ...]] = []
    handle = model.module.register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape)))
    return seen, handle


def _images(tiny_image: np.ndarray) -> list[np.ndarray]:
    """Images whose masked-pass counts differ (other crops and flips of the tiny image)."""
    return [tiny_image, np.ascontiguousarray(tiny_image[::-1]), np.ascontiguousarray(tiny_image[:, ::-1]),
            np.ascontiguousarray(tiny_image[5:, 7:]), (255 - tiny_image)]


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_no_image_brings_a_new_input_shape(gated_model: LoadedModel, tiny_image: np.ndarray, chunk: int) -> None:
    images = _images(tiny_image)
    seen, handle = _shapes_of(gated_model)
    try:
        first = explain(gated_model, images[0], chunk_size=chunk)
        known = set(seen)
        passes = {first.report["forward_passes"]["masked"]}
        for image in images[1:]:
            passes.add(explain(gated_model, image, chunk_size=chunk).report["forward_passes"]["masked"])
    finally:
        handle.remove()
    assert len(passes) > 1, "the images should need different numbers of masked passes"
    assert set(seen) <= known, f"new shapes {set(seen) - known} after the first image"
    assert all(shape[0] in (1, 2, chunk) for shape in known)


def test_padding_costs_at_most_a_chunk(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    seen, handle = _shapes_of(tiny_model)
    try:
        exp = explain(tiny_model, tiny_image, chunk_size=3)
    finally:
        handle.remove()
    rows = sum(shape[0] for shape in seen)
    passes = exp.report["forward_passes"]
    made = passes["gradient"] + passes["baseline"] + passes["masked"] + passes["scoring"]
    assert made <= rows < made + 3 + 1   # ≤ 2 padded rows in the masked passes, ≤ 1 in derive's (2 → 2, 1 → 1)


def test_fp32_passes_run_without_tf32_and_the_callers_flags_are_kept(tiny_model: LoadedModel,
                                                                     tiny_image: np.ndarray) -> None:
    during: list[tuple[bool, bool]] = []
    handle = tiny_model.module.register_forward_pre_hook(
        lambda _m, _i: during.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for caller in ((True, True), (True, False), (False, True)):
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = caller
            explain(tiny_model, tiny_image)
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == caller
    finally:
        handle.remove()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert during and set(during) == {(False, False)}


def test_math_mode_lets_like_passes_share_and_makes_the_other_wait() -> None:
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def exact_pass() -> None:
        with math_mode("fp32"):
            events.append(f"exact {torch.backends.cudnn.allow_tf32}")
            inside.set()
            release.wait(5)
        events.append("exact out")

    def tf32_pass() -> None:
        with math_mode("tf32"):
            events.append(f"tf32 {torch.backends.cudnn.allow_tf32}")

    try:
        first = threading.Thread(target=exact_pass)
        first.start()
        assert inside.wait(5)
        with math_mode("fp32"):                      # a second exact pass enters at once
            assert torch.backends.cudnn.allow_tf32 is False
        waiting = threading.Thread(target=tf32_pass)
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive(), "a TF32 pass must wait while exact passes run"
        release.set()
        first.join(5)
        waiting.join(5)
        assert events == ["exact False", "exact out", "tf32 True"]
        assert torch.backends.cudnn.allow_tf32 is True   # the caller's flag, restored
    finally:
        release.set()
        torch.backends.cudnn.allow_tf32 = saved


def test_what_the_machine_cannot_serve_is_refused_before_any_work(tiny_model: LoadedModel,
                                                                  tiny_image: np.ndarray) -> None:
    before = tiny_model.forwarded_images
    with pytest.raises(ValueError, match=r"tf32.*CUDA"):
        explain(tiny_model, tiny_image, precision="tf32")
    with pytest.raises(ValueError, match="unknown precision"):
        explain(tiny_model, tiny_image, precision="fp64")
    for chunk in (0, -3, 10**6):
        with pytest.raises(ValueError, match="chunk size"):
            explain(tiny_model, tiny_image, chunk_size=chunk)
    assert tiny_model.forwarded_images == before
    assert check_precision("bf16", torch.device("cpu")) == "bf16"
    assert check_chunk(4, torch.device("cpu"), (3, 32, 32)) == 4


class RunsOutOfMemory(TinyNet):
    """A TinyNet whose forward fails as CUDA does past ``limit`` rows."""

    limit = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_halves_the_chunk_once_and_says_so(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    failing = LoadedModel.from_module(RunsOutOfMemory(), name="oom", input_size=(32, 32), mean=(0.5,) * 3,
                                      std=(0.25,) * 3, class_names=[f"c{i}" for i in range(5)],
                                      default_layer="features", compile=False)
    got = explain(failing, tiny_image, chunk_size=4)
    expected = explain(tiny_model, tiny_image, chunk_size=4)
    assert any("ran out of memory at 4" in warning and "at 2" in warning for warning in got.report["warnings"])
    for name in MAP_NAMES:
        np.testing.assert_allclose(got.maps[name], expected.maps[name], atol=1e-5, err_msg=name)
    RunsOutOfMemory.limit = 1
    try:
        with pytest.raises(torch.OutOfMemoryError):   # a second failure is the caller's (a plain sentence in the app)
            explain(failing, tiny_image, chunk_size=4)
    finally:
        RunsOutOfMemory.limit = 2
