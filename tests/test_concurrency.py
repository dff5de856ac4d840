"""Many callers at once on one shared model: results equal the same request run alone.

Capture is per request (``fusioncam.capture``): its hooks act only on the forwards of the
thread that opened it, and it changes no shared state of the module (training flag,
``requires_grad``); only its own thread's grad mode, restored on exit.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import TinyNet
from torch import nn

from fusioncam import MAP_NAMES, LoadedModel, explain
from fusioncam.capture import CaptureError, capture_layer


def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in module.modules())


def test_threads_sharing_a_model_get_their_own_answers(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    images = [tiny_image, tiny_image[::-1].copy(), tiny_image[:, ::-1].copy(), 255 - tiny_image]
    requests = [(image, target, strength) for image, target, strength in
                zip(images * 2, [0, 1, 2, 3, 4, None, 1, 2], [0.5, 1, 2, 4, 0, 1, 3, 1], strict=True)]

    def run(request: tuple) -> dict[str, np.ndarray]:
        image, target, strength = request
        return explain(tiny_model, image, target=target, strength=strength, chunk_size=2).maps

    alone = [run(request) for request in requests]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, requests))
    for single, shared in zip(alone, together, strict=True):
        for name in MAP_NAMES:
            np.testing.assert_allclose(shared[name], single[name], atol=1e-6, err_msg=name)
    assert not any(m._forward_hooks for m in tiny_model.module.modules())


class GatedNet(TinyNet):
    """TinyNet whose first forward on the thread named ``held`` waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.held_inside = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if threading.current_thread().name == "held" and not self.release.is_set():
            self.held_inside.set()
            self.release.wait(timeout=60)
        return super().forward(x)


def test_an_open_capture_leaves_other_threads_forwards_alone(tiny_image: np.ndarray) -> None:
    """Thread ``held`` opens its capture (hooks on the shared model) and stops inside its forward;
    meanwhile another thread runs a whole explanation (capture, Score-CAM, fusion passes) through
    the same layers. Both must get exactly what they get alone."""
    model = LoadedModel.from_module(GatedNet(), name="gated", input_size=(32, 32), mean=(0.5,) * 3,
                                    std=(0.25,) * 3, class_names=[f"c{i}" for i in range(5)], default_layer="features")
    first, second = tiny_image, np.ascontiguousarray(255 - tiny_image[::-1])
    model.module.release.set()
    alone = [explain(model, first, target=1).maps, explain(model, second, target=2).maps]
    model.module.release.clear()

    results: dict[str, object] = {}

    def held() -> None:
        try:
            results["held"] = explain(model, first, target=1).maps
        except Exception as error:  # reported below, not lost in the thread
            results["held"] = error

    thread = threading.Thread(target=held, name="held")
    thread.start()
    try:
        assert model.module.held_inside.wait(timeout=60)       # its capture hooks are on the model now
        assert hook_count(model.module) == 2
        results["other"] = explain(model, second, target=2).maps
    finally:
        model.module.release.set()
        thread.join(timeout=60)
    for key, single in zip(("held", "other"), alone, strict=True):
        together = results[key]
        assert isinstance(together, dict), f"{key}: {together!r}"
        for name in MAP_NAMES:
            np.testing.assert_allclose(together[name], single[name], atol=1e-6, err_msg=f"{key} {name}")
    assert hook_count(model.module) == 0


def test_capture_changes_no_shared_state_and_restores_this_threads_grad_mode(tiny_model: LoadedModel) -> None:
    module = tiny_model.module
    module.train()
    module.stem.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    x = torch.randn(2, 3, 32, 32)
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled):
            with capture_layer(module, module.features) as record:
                assert module.training and {n: p.requires_grad for n, p in module.named_parameters()} == flags
                assert not torch.is_grad_enabled()          # nothing upstream of the layer builds a graph
                score = module(x)[:, 1].sum()
                assert record.gradient(score).shape == record.activation.shape == (2, 8, 16, 16)
            assert torch.is_grad_enabled() == grad_enabled
    assert module.training and {n: p.requires_grad for n, p in module.named_parameters()} == flags
    assert all(p.grad is None for p in module.parameters())   # parameters got no gradient
    assert hook_count(module) == 0


def test_capture_restores_the_grad_mode_after_an_error_in_the_forward(tiny_model: LoadedModel) -> None:
    module = tiny_model.module

    def explode(*_args: object) -> None:
        raise RuntimeError("boom")

    handle = module.fc.register_forward_hook(explode)            # fails after the target layer ran
    try:
        with pytest.raises(RuntimeError, match="boom"), capture_layer(module, module.features):
            module(torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()
    assert torch.is_grad_enabled() and hook_count(module) == 0


def test_capture_of_a_layer_that_is_not_a_map_is_a_plain_error(tiny_model: LoadedModel) -> None:
    module = tiny_model.module
    with pytest.raises(CaptureError, match="outputs 1×5, not a 4-D feature map"), capture_layer(module, module.fc):
        module(torch.randn(1, 3, 32, 32))
    with pytest.raises(CaptureError, match="not reached"), capture_layer(module, nn.Conv2d(3, 3, 1)) as record:
        module(torch.randn(1, 3, 32, 32))
        record.activation  # noqa: B018 — the property raises
    assert hook_count(module) == 0
