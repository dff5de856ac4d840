"""Hook-safe evidence capture: a target layer's activation ``A`` and gradient ``G = ∂f_c/∂A``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class CaptureError(RuntimeError):
    """The target layer did not produce a 4-D feature map during the forward pass."""


@dataclass
class LayerRecord:
    """What one forward pass recorded at the target layer (``activation`` is a grad-enabled leaf)."""

    activation: torch.Tensor | None = None
    calls: int = field(default=0)

    def gradient(self, score: torch.Tensor) -> torch.Tensor:
        """``∂ score / ∂A`` for a scalar ``score`` computed downstream of the layer."""
        if self.activation is None:
            raise CaptureError("the target layer was not reached during the forward pass")
        (grad,) = torch.autograd.grad(score, self.activation)
        return grad


@contextmanager
def capture_layer(model: nn.Module, layer: nn.Module) -> Iterator[LayerRecord]:
    """Record ``layer``'s output on the next forward of ``model`` and make it differentiable.

    The forward hook swaps the output for a detached leaf copy ``A`` (``requires_grad``) and
    hands downstream a clone of it, so in-place activations after the layer can neither
    corrupt ``A`` nor break autograd, and no graph is built upstream of the layer. Parameters
    are frozen meanwhile. On exit — success or error — the hook is removed and
    ``model.training`` and every parameter's ``requires_grad`` are restored.
    """
    record = LayerRecord()
    training = model.training
    requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]

    def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        record.calls += 1
        if record.calls > 1:
            return None  # a shared layer called again: keep the first call's evidence
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise CaptureError("the target layer must output a 4-D feature map (N×K×h×w), "
                               f"got {type(output).__name__}"
                               + (f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else ""))
        record.activation = output.detach().clone().requires_grad_(True)
        return record.activation.clone()

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        for parameter, _ in requires_grad:
            parameter.requires_grad_(False)
        yield record
    finally:
        handle.remove()
        model.train(training)
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)
