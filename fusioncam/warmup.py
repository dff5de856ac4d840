"""Shape warm-up: run the network once at every input shape the library's passes use, so that no
visitor's first explanation pays for them.

On a GPU every new input shape of an eager network costs seconds the first time (cuDNN builds an
execution plan per convolution and shape; measured on an H200: a new image's first explanation took
1.8–4.3 s against ~70 ms warm). The passes use a fixed set of shapes — the capture's forward and
backward at batch 1, the baseline pass at batch 1, the masked passes at the chunk size (every chunk
padded to it), :func:`~fusioncam.explain.derive`'s scoring passes at 1, 2, 4, … 16
(:func:`~fusioncam.explain.scoring_rows`) — so explaining one synthetic image and scoring each
scoring shape once warms them all.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch

from .backend import auto_chunk_size
from .models import LoadedModel

LOG = logging.getLogger(__name__)
DERIVE_CHUNK = 16   # explain()'s default chunk for derive's scoring passes


def warm_up_shapes(model: LoadedModel) -> list[tuple[int, ...]]:
    """Run ``model`` once at every input shape an explanation of one image (or a batch's derive
    step) uses, on its device; returns the shapes, in the order they were run."""
    from .explain import explain, scoring_rows

    seen: list[tuple[int, ...]] = []

    def record(_module: torch.nn.Module, inputs: tuple) -> None:
        shape = tuple(inputs[0].shape)
        if shape not in seen:
            seen.append(shape)

    noise = np.random.default_rng(0).integers(0, 256, (*model.input_size, 3), dtype=np.uint8)
    handle = model.module.register_forward_pre_hook(record)
    try:
        explain(model, noise)
        sample = torch.zeros((1, 3, *model.input_size), device=model.device)
        for rows in sorted({scoring_rows(n, DERIVE_CHUNK) for n in range(1, DERIVE_CHUNK + 1)}):
            model.score(sample, pad_to=rows)
        chunk = auto_chunk_size(model.device, (3, *model.input_size), model)
        model.score(sample, pad_to=chunk)          # the metrics' passes use the same chunk
    finally:
        handle.remove()
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return seen


class ShapeWarmUp:
    """One model's background warm-up (:func:`warm_up_shapes`), started at most once."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.shapes: list[tuple[int, ...]] = []
        self.seconds: float | None = None

    def start(self, model: LoadedModel) -> None:
        """Warm ``model`` up in a daemon thread unless that was done already; never raises."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, args=(model,), name=f"fusioncam-warm-{model.name}", daemon=True).start()

    def _run(self, model: LoadedModel) -> None:
        started = time.perf_counter()
        try:
            self.shapes = warm_up_shapes(model)
            self.seconds = time.perf_counter() - started
            LOG.info("warmed up %d input shapes of %s in %.1f s", len(self.shapes), model.name, self.seconds)
        except Exception:   # a failed warm-up only means the first visitor pays the shapes
            LOG.exception("shape warm-up of %s failed", model.name)
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the warm-up finished (or was never started) within ``timeout`` seconds."""
        with self._lock:
            if not self._started:
                return True
        return self._done.wait(timeout)
