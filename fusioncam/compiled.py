"""The compiled scoring network: ``torch.compile`` (inductor) of a model's inference forward, built in
the background and used for the masked passes once it is ready.

Score-CAM's masked passes and the metrics' scoring passes run one fixed network hundreds of times on
batches of one shape, the best case for a compiled graph. :class:`CompiledScorers` is one model's
cache ``ScorerKey → graph``, keyed by everything a graph is specialised to: the network object, its
device, the batch shape, dtype, memory layout and precision (autocast). The rules:

- **Off the request path.** The first :meth:`CompiledScorers.score` of a key starts one background
  thread (the check and the start happen under one lock, so concurrent first calls start one) that
  compiles a private copy of the network and warms it. Until the graph is ready every call runs
  eager and never waits for it. A ready graph runs in dynamo's run-only mode
  (``torch._dynamo.run``): a request never compiles; an input the graph does not fit runs eager.
- **Fixed shapes.** Callers pass their chunk size as ``pad_to``: a smaller last chunk is padded with
  zeros to that size and the padding's logits dropped, so one graph serves every image and nothing
  recompiles per image. Compilations run one at a time in the process (each uses every core).
- **Same answers.** Before use a graph is compared with the eager copy on one random batch; one with
  ``max |Δ logit| > tol · max(1, max |logit|)`` (``tol`` = 1e-3 in fp32, 0.1 under bf16/fp16
  autocast) is never used. The benchmarks measure the maps: equal to ~1e-6.
- **Never failing a request.** Any exception while compiling or running a graph (no C++ compiler, a
  model dynamo cannot capture as one graph, …) logs one warning for that model, turns compilation
  off for it, and the call runs eager.
- **Dropped with the model.** The cache lives on the :class:`~fusioncam.models.LoadedModel`; each
  graph is traced from a function with a code object of its own (dynamo keeps compiled code on the
  code object it traced), so no global cache holds the copy, the graph or the model, and no model's
  graphs count against another's recompile limit. The thread holds only weak references until it
  copies the network.
- **Never stale.** The copy (and, with inductor's freezing, the folded weights) snapshots the
  weights when compilation starts. A later change in place, as the tensors' version counters see it
  (``reset_parameters``, ``nn.init``, ``load_state_dict``, optimiser steps) or a replaced tensor,
  turns compilation off for that model with one log line instead of serving old weights; writes
  through ``.data`` bypass the counters. A network meant to change (a sanity check's randomised
  copy) should be loaded with ``compile=False``.
- **Never before a fork.** Under Hugging Face ZeroGPU (``SPACES_ZERO_GPU`` set, or the ``spaces``
  package with ``Config.zero_gpu``) every ``@spaces.GPU`` call runs in a short-lived forked worker.
  A fork copies only the thread that forks: a compile thread running at that moment vanishes in the
  child while the locks it held (dynamo's compile lock, the import lock, allocator locks) stay
  locked there, so the worker can hang; and a graph compiled inside a worker dies with it. So no
  compile thread is ever started there, nor in any process forked from another, nor when
  ``FUSIONCAM_COMPILE=0`` (the test suite sets it).
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .backend import autocast, check_precision, math_mode, on_zero_gpu, prefers_channels_last

log = logging.getLogger(__name__)

SWITCH = "FUSIONCAM_COMPILE"     # "0" turns compilation off in this process
TOLERANCE = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.1}
_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
          "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks")
_BUILD_LOCK = threading.Lock()   # one compilation at a time in the process
_names = itertools.count()
_builders: set[threading.Thread] = set()   # running compile threads (they hold no model)


class _Cancelled(BaseException):
    """Raised inside a compile thread when the interpreter exits."""


class WeightsChanged(RuntimeError):
    """The network's weights changed after its graph was compiled from a copy of them."""


def _cancel_builds() -> None:
    """At interpreter exit, before it joins its threads: cancel every running compilation.

    A compile thread is not a daemon: a daemon thread killed inside torch's C++ code during
    interpreter shutdown aborts the process ("terminate called without an active exception").
    Instead an exception is raised in it at its next Python bytecode (dynamo's tracing is Python,
    so within moments; measured: 0.5–2.5 s more to exit) and the thread is joined: a script that
    exits while a graph compiles neither waits for the compilation nor dies in it.
    """
    for thread in list(_builders):
        if thread.ident is not None and thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Cancelled))


def _forked() -> None:
    """In a process forked from this one: no compiling there (a compile thread and the locks it held
    did not come along; see the module doc). Graphs ready before the fork still serve."""
    global _in_fork_child
    _in_fork_child = True


_in_fork_child = False
threading._register_atexit(_cancel_builds)   # the hook concurrent.futures uses; runs before threads are joined
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@dataclass(frozen=True)
class ScorerKey:
    """What one compiled graph is specialised to."""

    network: int                 # id() of the nn.Module
    device: torch.device
    shape: tuple[int, ...]       # the padded batch shape
    dtype: torch.dtype
    channels_last: bool
    precision: str


def compile_blocker() -> str | None:
    """Why compilation is off in this process (``FUSIONCAM_COMPILE=0``, ZeroGPU), or ``None``."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{SWITCH}={os.environ[SWITCH]}"
    if on_zero_gpu() or _spaces_zero_gpu():
        return "ZeroGPU runs GPU calls in forked workers"
    if _in_fork_child:
        return "a forked process"
    return None


def _spaces_zero_gpu() -> bool:
    """Whether an imported ``spaces`` package says it runs on ZeroGPU."""
    config = getattr(getattr(sys.modules.get("spaces"), "config", None), "Config", None)
    return bool(getattr(config, "zero_gpu", False))


class CompiledScorers:
    """One model's compiled scoring graphs, built in the background on first use (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ready: dict[ScorerKey, tuple[Callable[[torch.Tensor], torch.Tensor], object]] = {}  # graph, stamp
        self._building: set[ScorerKey] = set()
        self.failure: str | None = None                 # why compilation is off for this model
        self.ready_after_s: dict[ScorerKey, float] = {}  # seconds from first use to a ready graph
        self.builds_started = 0

    def score(self, network: nn.Module, batch: torch.Tensor, pad_to: int | None = None, precision: str = "fp32",
              enabled: bool = True, label: str = "model") -> torch.Tensor:
        """``network(batch)`` under inference mode (and ``precision``'s autocast and TF32 setting,
        :func:`~fusioncam.backend.math_mode`), with ``batch`` padded to ``pad_to`` rows, so that every
        call of a caller has one input shape (no new cuDNN plan or graph per image): by the compiled
        graph of that shape once it is ready, eagerly until then; the first call of a key starts its
        compilation when ``enabled``."""
        check_precision(precision)
        count = len(batch)
        layout = torch.channels_last if prefers_channels_last(network) else torch.contiguous_format
        key = ScorerKey(id(network), batch.device, (max(count, pad_to or 0), *batch.shape[1:]), batch.dtype,
                        layout is torch.channels_last, precision)
        graph, stamp = self._ready.get(key, (None, None)) if enabled else (None, None)
        if graph is not None and stamp != weights_stamp(network):
            self._finish(key, None, WeightsChanged("its weights changed in place after compilation"), label, 0.0)
            graph = None
        if graph is None and enabled and self.failure is None:
            self._start(network, key, label)
        with torch.inference_mode(), math_mode(precision), autocast(batch.device, precision):
            if graph is not None:
                try:
                    return graph(_padded(batch, key.shape[0], layout))[:count]
                except torch.OutOfMemoryError:   # the request's to handle (a smaller chunk), not the graph's fault
                    raise
                except Exception as error:  # a graph must never fail a request: eager from now on
                    self._finish(key, None, error, label, 0.0)
            if count < key.shape[0]:
                batch = _padded(batch, key.shape[0], layout)
            return network(batch)[:count]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no compilation of this model is running (for benchmarks and tests, never on
        the request path); ``False`` when ``timeout`` seconds passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._building, timeout)

    @property
    def ready(self) -> list[ScorerKey]:
        """The keys whose graph is ready."""
        return list(self._ready)

    def _start(self, network: nn.Module, key: ScorerKey, label: str) -> None:
        """Start the background compilation of ``key`` unless it is running, done, or blocked."""
        if compile_blocker() is not None:
            return
        with self._lock:
            if self.failure is not None or key in self._building or key in self._ready:
                return
            for stale in [k for k in self._ready if (k.network, k.device) != (key.network, key.device)]:
                del self._ready[stale]   # graphs of a replaced or moved network would never match again
            self._building.add(key)
            self.builds_started += 1
        thread = threading.Thread(target=_build, name=f"fusioncam-compile-{label}",
                                  args=(weakref.ref(self), weakref.ref(network), key, label, time.perf_counter()))
        _builders.add(thread)
        thread.start()

    def _finish(self, key: ScorerKey, graph: tuple[Callable, object] | None, error: BaseException | None,
                label: str, seconds: float) -> None:
        """Record a build's outcome (its graph and weights stamp); the first error turns compilation
        off for this model, with one log line."""
        with self._lock:
            self._building.discard(key)
            if graph is not None and self.failure is None:
                self._ready[key] = graph
                self.ready_after_s[key] = seconds
                log.info("compiled the scoring network of %s for batch %s (%s) in %.1f s", label,
                         "×".join(map(str, key.shape)), key.precision, seconds)
            elif error is not None and self.failure is None:
                first_line = next(iter(str(error).strip().splitlines()), "")
                self.failure = f"{type(error).__name__}: {first_line}"[:300]
                self._ready.clear()
                log.warning("compiled scoring is off for %s (%s); its scoring passes run eager", label,
                            self.failure)
            self._lock.notify_all()


def _build(cache_ref: weakref.ref[CompiledScorers], network_ref: weakref.ref[nn.Module], key: ScorerKey,
           label: str, started: float) -> None:
    """The compile thread: compile ``key``'s graph and hand it to the cache, if both still exist."""
    graph, error = None, None
    try:
        with _BUILD_LOCK:
            network = network_ref()
            if network is None or cache_ref() is None:
                return
            stamp = weights_stamp(network)
            replica = _replica(network)
            del network
            graph = _compile(replica, key), stamp
    except Exception as exc:  # no C++ compiler, untraceable model, …: eager, with one log line
        error = exc
    except _Cancelled:         # the interpreter is exiting
        return
    finally:
        _builders.discard(threading.current_thread())
        cache = cache_ref()
        if cache is not None:
            cache._finish(key, graph, error, label, time.perf_counter() - started)


def weights_stamp(network: nn.Module) -> tuple[int, int] | None:
    """Changes when a parameter or buffer is modified in place (the sum of version counters) or
    replaced (its storage); ``None`` where untracked (inference tensors keep no version counter)."""
    try:
        tensors = [*network.parameters(), *network.buffers()]
        return sum(t._version for t in tensors), hash(tuple(t.data_ptr() for t in tensors))
    except RuntimeError:
        return None


def _replica(network: nn.Module) -> nn.Module:
    """A private copy of ``network`` to trace: eval mode, no gradients, and none of the original's hooks
    (another request's capture hook must not end up in the graph)."""
    for attempt in range(3):
        try:
            replica = copy.deepcopy(network)
            break
        except RuntimeError:  # a concurrent request added or removed a hook while it was copied
            if attempt == 2:
                raise
    for module in replica.modules():
        for name in _HOOKS:
            hooks = getattr(module, name, None)
            if hooks is not None:
                hooks.clear()
    return replica.eval().requires_grad_(False)


def _own_code(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``batch → network(batch)`` as a function with a code object of its own (see the module doc)."""
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return network(batch)

    name = f"score_{next(_names)}"
    code = forward.__code__.replace(co_name=name)
    return types.FunctionType(code, forward.__globals__, name, None, forward.__closure__)


def _compile(replica: nn.Module, key: ScorerKey) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compile, warm and check the graph of ``key`` (inductor with freezing: weights folded as
    constants, convolution + batch norm fused); the run-only callable a request may call."""
    graph = torch.compile(_own_code(replica), fullgraph=True, dynamic=False, options={"freezing": True})
    layout = torch.channels_last if key.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)         # never the global RNG another thread uses
    with torch.inference_mode():                          # an inference tensor, as requests pass
        sample = torch.randn(key.shape, generator=generator).to(key.device, key.dtype)
        sample = sample.contiguous(memory_format=layout)
        with math_mode(key.precision), autocast(key.device, key.precision):   # TF32 is fixed at build
            compiled, eager = graph(sample).float(), replica(sample).float()
    error = (compiled - eager).abs().max().item()
    limit = TOLERANCE[key.precision] * max(1.0, eager.abs().max().item())
    if not error <= limit:
        raise ArithmeticError(f"the compiled graph's logits differ from eager by {error:.2e} (limit {limit:.2e})")
    return torch._dynamo.run(graph)


def _padded(batch: torch.Tensor, rows: int, layout: torch.memory_format) -> torch.Tensor:
    """``batch`` as an inference tensor of ``rows`` rows in ``layout`` (zeros after its own rows),
    the exact form a graph was compiled for; ``batch`` itself when it already is."""
    if len(batch) == rows and batch.is_inference() and batch.is_contiguous(memory_format=layout):
        return batch
    padded = torch.empty((rows, *batch.shape[1:]), dtype=batch.dtype, device=batch.device).contiguous(
        memory_format=layout)
    padded[:len(batch)] = batch
    padded[len(batch):] = 0
    return padded
