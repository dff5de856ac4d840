"""Where the tensors live: device choice, memory layout, chunk sizes, precision and ZeroGPU support."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# Masked inputs per forward on CPU. Bundled model, channels_last, 224², 2-core AMD EPYC shared
# with other jobs (best-of-repeats images/s; three separate measurements): batch 1/4/8/16/32 →
# 68/80/60/52/28 (benchmarks/scorecam.py, 1 thread); batch 4/8/16/32 → 207/122/119/72 and
# 8/16/32 → 159/122/83 (2 threads). Throughput peaks at 4–8 and falls past 16 as activations
# leave the cache, so 4 is a fixed choice (any chunk gives the same scores): a tuning pass per
# run would cost extra forwards and, on a busy CPU, its timings would mostly measure the noise.
CPU_CHUNK = 4
GPU_BYTES_PER_SAMPLE = 64e6  # per-sample activation budget when no module is given to measure
GPU_MEMORY_SHARE = 0.5       # share of the free GPU memory one chunk of masked passes may use
# Every pass pads its last chunk to the chunk size (one input shape per chunk size, see region.py), so a
# large chunk wastes up to a chunk of passes per image: 400–1,000 masked passes per image on the bundled
# model make 256 the cap (≤ 255 padded rows, still near the peak rate on an H200).
GPU_MAX_CHUNK = 256
_PROBE_BATCH = 4
_gpu_chunk_cache: dict[tuple, int] = {}


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


def _network(module: object) -> nn.Module | None:
    """The ``nn.Module`` behind a model callable (a :class:`~fusioncam.models.LoadedModel` or a module)."""
    inner = getattr(module, "module", module)
    return inner if isinstance(inner, nn.Module) else None


def prefers_channels_last(module: object) -> bool:
    """Whether the network's first 4-D weight (its first convolution) is stored ``channels_last``:
    masked inputs are then built in that layout so the first convolution needs no conversion."""
    network = _network(module)
    if network is None:
        return False
    for parameter in network.parameters():
        if parameter.dim() == 4 and parameter.is_contiguous() != parameter.is_contiguous(
                memory_format=torch.channels_last):        # a 1×1 kernel is both: undecided, look further
            return parameter.is_contiguous(memory_format=torch.channels_last)
    return False


def auto_chunk_size(device: torch.device, sample_shape: tuple[int, ...], module: object | None = None,
                    precision: str = "fp32") -> int:
    """Masked inputs per forward pass: :data:`CPU_CHUNK` on CPU (and MPS); on CUDA sized from the
    free memory, using the per-sample memory of ``module`` measured once by a probe forward when
    given (cached per device, network, input shape and precision), else a generous fixed budget,
    rounded down to a power of two: free memory varies between requests, and each chunk size is a
    graph of its own for the compiled scoring network (:mod:`fusioncam.compiled`)."""
    if device.type != "cuda":
        return CPU_CHUNK
    shape = tuple(sample_shape[-3:])
    network = _network(module) if module is not None else None
    if network is None:
        pixels = shape[-1] * shape[-2] / (224 * 224)
        per_sample = GPU_BYTES_PER_SAMPLE * pixels
    else:
        key = (str(device), id(network), shape, precision, prefers_channels_last(network))
        if key not in _gpu_chunk_cache:
            _gpu_chunk_cache[key] = _probe_bytes_per_sample(network, device, shape, precision)
        per_sample = _gpu_chunk_cache[key]
    free, _total = torch.cuda.mem_get_info(device)
    chunk = int(max(1, min(GPU_MAX_CHUNK, free * GPU_MEMORY_SHARE // per_sample)))
    return 1 << (chunk.bit_length() - 1)


MAX_CHUNK = 4096   # the most masked inputs per forward a caller may ask for


def check_chunk(chunk_size: int, device: torch.device, sample_shape: tuple[int, ...], module: object | None = None,
                precision: str = "fp32") -> int:
    """``chunk_size`` itself when ``device`` can serve it, else a ``ValueError`` with one sentence:
    it must be 1–:data:`MAX_CHUNK`, and on CUDA a chunk's measured activation memory must fit in
    the free GPU memory."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk size must be a whole number in 1–{MAX_CHUNK}, got {chunk_size!r}")
    network = _network(module) if module is not None else None
    if device.type == "cuda" and network is not None:
        key = (str(device), id(network), tuple(sample_shape[-3:]), precision, prefers_channels_last(network))
        if key not in _gpu_chunk_cache:
            _gpu_chunk_cache[key] = _probe_bytes_per_sample(network, device, key[2], precision)
        free, _total = torch.cuda.mem_get_info(device)
        if chunk_size * _gpu_chunk_cache[key] > free:
            fits = max(1, int(free // _gpu_chunk_cache[key]))
            raise ValueError(f"a chunk of {chunk_size} masked images needs more GPU memory than is free "
                             f"({free / 2**30:.1f} GiB); at most about {fits} fit now")
    return chunk_size


def _probe_bytes_per_sample(network: nn.Module, device: torch.device, shape: tuple[int, ...],
                            precision: str) -> int:
    """Peak extra GPU memory per sample of one inference forward at batch :data:`_PROBE_BATCH`."""
    layout = torch.channels_last if prefers_channels_last(network) else torch.contiguous_format
    probe = torch.zeros((_PROBE_BATCH, *shape), device=device).contiguous(memory_format=layout)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast(device, precision):
        network(probe)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    return max(1, int(peak // _PROBE_BATCH))


def check_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS` and ``device`` (when given) can serve
    it, else a ``ValueError`` with one sentence: TF32 exists only on CUDA GPUs (Ampere and newer),
    bf16 only where the GPU supports it."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device is None:
        return precision
    if precision == "tf32" and (device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8):
        raise ValueError(f"precision 'tf32' needs a CUDA GPU of the Ampere generation or newer; this is {device}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16' is not supported by this GPU; use 'fp16' or 'fp32'")
    return precision


class _MathGate:
    """Process-wide TF32 switches, shared safely by concurrent passes.

    ``torch.backends.cudnn.allow_tf32`` and ``torch.backends.cuda.matmul.allow_tf32`` are global
    flags, read by every convolution and matmul when it runs. Passes that need the same setting
    enter together; a pass that needs the other setting waits until they have all left. The first
    pass in sets the flags, the last one out restores the caller's values, so a caller's own flags
    are as they were once no library pass runs.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._mode: bool | None = None      # the TF32 setting the running passes share
        self._holders = 0
        self._saved: tuple[bool, bool] = (False, False)

    @contextlib.contextmanager
    def hold(self, allow_tf32: bool) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._holders == 0 or self._mode == allow_tf32)
            if self._holders == 0:
                self._saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
                self._mode = allow_tf32
            self._holders += 1
        try:
            yield
        finally:
            with self._changed:
                self._holders -= 1
                if self._holders == 0:
                    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self._saved
                    self._mode = None
                    self._changed.notify_all()


_MATH_GATE = _MathGate()


def math_mode(precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The TF32 setting of a network pass: on only for ``precision="tf32"`` (opt-in), off for every
    other precision, so ``fp32`` is IEEE fp32 on every device (PyTorch's own default lets cuDNN
    convolutions use TF32, which moved the maps by up to 1.7e-2 on an H200). Thread-safe, and the
    caller's flags are restored when no pass of the library runs (:class:`_MathGate`)."""
    return _MATH_GATE.hold(check_precision(precision) == "tf32")


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Reduced-precision autocast for ``bf16`` / ``fp16`` (opt-in, approximate); ``fp32`` and
    ``tf32`` (a math mode, :func:`math_mode`) run with autocast left as it is."""
    if check_precision(precision) in ("fp32", "tf32"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a CPU → CUDA copy goes through pinned memory without blocking
    the host (the stream orders it before any kernel that reads it)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def on_zero_gpu() -> bool:
    """Whether this process is a ZeroGPU Space's main process (``spaces`` sets ``SPACES_ZERO_GPU``)."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def gpu_decorator(duration: int = 120) -> Callable[[F], F]:
    """Hugging Face's ``spaces.GPU`` on ZeroGPU, else a no-op.

    ZeroGPU runs each decorated call in a process forked from the main one. A fork copies
    OpenMP's thread pool as dead threads: once the main process has run one multi-threaded
    CPU op, the worker's first one waits forever (GNU libgomp). So on ZeroGPU the main process
    runs PyTorch on one thread (it only draws pictures; the network runs in the workers), and
    each worker sets its own thread count before it starts.
    """
    if not on_zero_gpu():
        return lambda function: function
    import spaces  # type: ignore[import-not-found]

    worker_threads = max(1, os.cpu_count() or 1)
    torch.set_num_threads(1)

    def decorate(function: F) -> F:
        if inspect.isgeneratorfunction(function):   # streams its results out of the worker (spaces' generators)
            @functools.wraps(function)
            def streaming_in_worker(*args: object, **kwargs: object) -> Iterator[object]:
                torch.set_num_threads(worker_threads)
                yield from function(*args, **kwargs)

            return spaces.GPU(duration=duration)(streaming_in_worker)

        @functools.wraps(function)
        def in_worker(*args: object, **kwargs: object) -> object:
            torch.set_num_threads(worker_threads)
            return function(*args, **kwargs)

        return spaces.GPU(duration=duration)(in_worker)

    return decorate
