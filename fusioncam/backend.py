"""Where the tensors live: device choice, memory layout, chunk sizes, and ZeroGPU support."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable)

DEVICES = ("auto", "cpu", "cuda", "mps")
CPU_CHUNK = 16               # masked inputs per forward on CPU: past ~8 throughput is flat
GPU_BYTES_PER_SAMPLE = 64e6  # a generous per-sample activation budget for automatic GPU chunks


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else Apple MPS, else CPU; otherwise the named device."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available")
    return torch.device(name)


def prepare(module: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """Move ``module`` to ``device`` in eval mode; ``channels_last`` is an exact layout change
    that speeds up convolution on CPU and GPU alike."""
    module = module.to(device).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def auto_chunk_size(device: torch.device, sample_shape: tuple[int, ...]) -> int:
    """Masked inputs per forward pass: a fixed size on CPU, sized from free memory on a GPU."""
    if device.type != "cuda":
        return CPU_CHUNK
    free, _total = torch.cuda.mem_get_info(device)
    pixels = sample_shape[-1] * sample_shape[-2] / (224 * 224)
    return int(max(1, min(512, free * 0.5 // (GPU_BYTES_PER_SAMPLE * pixels))))


def gpu_decorator(duration: int = 120) -> Callable[[F], F]:
    """Hugging Face's ``spaces.GPU`` when that package is installed (ZeroGPU), else a no-op."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda function: function
    return spaces.GPU(duration=duration)
