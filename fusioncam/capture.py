"""Per-request evidence capture: a target layer's maps ``A`` and gradient ``G = ∂f_c/∂A``.

The capture touches no shared state of the network: no ``eval()``/``train()``, no
``requires_grad`` change, and its hooks act only on forwards run by the thread that opened it,
so several threads may explain on one model at once, each getting what it would get alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .tokens import Layout, LayoutError, layout_of


class CaptureError(RuntimeError):
    """The target layer produced no usable feature maps during the forward pass."""


@dataclass
class LayerRecord:
    """What this request's forward recorded at the target layer: the raw output as a leaf that
    requires grad, the :class:`~fusioncam.tokens.Layout` mapping it to ``N×K×h×w`` and the
    input's ``H×W``."""

    leaf: torch.Tensor | None = None
    layout: Layout | None = None
    input_size: tuple[int, int] | None = None
    calls: int = field(default=0)

    def _recorded(self) -> tuple[torch.Tensor, Layout]:
        if self.leaf is None or self.layout is None:
            raise CaptureError("the target layer was not reached during the forward pass")
        return self.leaf, self.layout

    @property
    def activation(self) -> torch.Tensor:
        """``A``: the layer's output as ``N×K×h×w`` maps, detached."""
        leaf, layout = self._recorded()
        return layout.to_map(leaf.detach())

    def gradient(self, score: torch.Tensor) -> torch.Tensor:
        """``G = ∂ score / ∂A`` (``N×K×h×w``) for a scalar ``score`` computed downstream of the
        layer: the layout's mapping is linear, so ``G`` is the raw output's gradient mapped alike."""
        leaf, layout = self._recorded()
        if not score.requires_grad:
            raise CaptureError("the class score does not depend on the target layer's output")
        (grad,) = torch.autograd.grad(score, leaf, allow_unused=True)
        if grad is None:
            raise CaptureError("the class score does not depend on the target layer's output")
        return layout.to_map(grad)


@contextmanager
def capture_layer(model: nn.Module, layer: nn.Module, name: str = "the target layer") -> Iterator[LayerRecord]:
    """Record ``layer``'s output on this thread's next forward of ``model`` and make it differentiable.

    The context runs with gradients off (grad mode is per thread), so nothing upstream of the
    layer builds a graph. The layer's forward hook, on this thread's first call only, stores a
    detached copy of the output as a leaf ``A_raw`` (``requires_grad``), turns gradients on for
    the rest of this thread's forward and hands downstream a clone of ``A_raw`` (so in-place
    activations after the layer neither corrupt nor break it). Forwards of other threads pass
    through untouched. On exit — success or error — both hooks are removed and this thread's
    grad mode is restored; the module's training flag and parameters are never touched.
    """
    record = LayerRecord()
    owner = threading.get_ident()

    def note_input(_module: nn.Module, inputs: tuple) -> None:
        if threading.get_ident() == owner and record.input_size is None and inputs \
                and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() >= 2:
            record.input_size = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))

    def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        if threading.get_ident() != owner:
            return None  # another request's forward through the shared model
        record.calls += 1
        if record.calls > 1:
            return None  # a shared layer called again: keep the first call's evidence
        if record.input_size is None:
            raise CaptureError("the model's input size was not seen before the target layer ran")
        try:
            layout = layout_of(model, layer, output, record.input_size, name)
        except LayoutError as error:
            raise CaptureError(str(error)) from None
        assert isinstance(output, torch.Tensor)
        record.leaf, record.layout = output.detach().clone().requires_grad_(True), layout
        torch.set_grad_enabled(True)
        return record.leaf.clone()

    grad_mode = torch.is_grad_enabled()
    handles = [model.register_forward_pre_hook(note_input), layer.register_forward_hook(hook)]
    try:
        torch.set_grad_enabled(False)
        yield record
    finally:
        for handle in handles:
            handle.remove()
        torch.set_grad_enabled(grad_mode)
