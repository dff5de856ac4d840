"""The implementations we compare against, and the measuring tools the benchmark shares.

* :func:`per_channel_loop` — how both published Fusion-CAM codes compute Score-CAM: for each of
  the K channels build the masked image and run the model at batch 1.
* :func:`grad_cam_scorecam` — PyPI ``grad-cam`` (jacobgil/pytorch-grad-cam) ``ScoreCAM`` at its
  default batch size 16.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fusioncam.fusion import normalize, upsample
from fusioncam.region import region_map


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock reading means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """``(seconds, result)`` of one call, synchronised on CUDA."""
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - started, result


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], int]]:
    """Yields a function giving the peak extra memory (bytes) used inside the block:
    ``max_memory_allocated`` growth on CUDA, else the resident set size sampled every 2 ms."""
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device) - start
        return
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes() - start)
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        sampler.join()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (1.0 for two identical constant maps)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


@torch.inference_mode()
def per_channel_loop(module: nn.Module, x: torch.Tensor, baseline: torch.Tensor, activations: torch.Tensor,
                     target: int) -> np.ndarray:
    """Score-CAM the published way: one batch-1 forward per channel, every channel (flat ones too)."""
    size = tuple(x.shape[-2:])
    scores = torch.empty(len(activations), device=x.device)
    for k in range(len(activations)):
        mask = normalize(upsample(activations[k][None], size))
        scores[k] = module(baseline + mask * (x - baseline))[0, target]
    return region_map(activations[None], scores[None], size)[0].cpu().numpy()


def grad_cam_scorecam(module: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """pytorch-grad-cam's ScoreCAM (batch size 16, its default; its tqdm bar silenced)."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), \
            ScoreCAM(model=module, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
