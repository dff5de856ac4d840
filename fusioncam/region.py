"""Region maps: exact, batched Score-CAM and its opt-in top-k approximation.

Score-CAM per METHOD.md §2: ``M_k = N(up(A_k))``, ``s_k = f(m(x, M_k))_c`` (logit),
``α = softmax_k(s)``, ``L_reg = N(ReLU(Σ_k α_k up(A_k)))``. A flat channel (max = min) has
``M_k = 0``, so its masked input *is* the baseline: all flat channels share the score
``f(x_b)_c``, computed once in the baseline pass — exact, not an approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .backend import autocast, check_precision, prefers_channels_last, to_device
from .fusion import normalize, upsample
from .models import LoadedModel


@dataclass
class RegionScores:
    """Channel scores for a batch: ``scores`` is ``N×K`` (``-inf`` for channels left out by
    top-k), ``baseline_logits`` is ``N×C`` (the logits of ``x_b``), ``masked_passes`` counts
    per image the masked inputs sent through the network (the baseline pass not included)
    and ``flat_channels`` per image the channels whose map is constant."""

    scores: torch.Tensor
    baseline_logits: torch.Tensor
    masked_passes: torch.Tensor
    flat_channels: torch.Tensor


def flat_channels(activations: torch.Tensor) -> torch.Tensor:
    """``N×K`` booleans: channels whose map is constant (max = min)."""
    return activations.amax(dim=(-2, -1)) == activations.amin(dim=(-2, -1))


def top_k_channels(channel_weights: torch.Tensor, k: int) -> torch.Tensor:
    """``N×K`` booleans selecting the ``k`` largest channel weights of each image."""
    k = max(1, min(k, channel_weights.shape[-1]))
    chosen = torch.zeros_like(channel_weights, dtype=torch.bool)
    return chosen.scatter_(1, channel_weights.topk(k, dim=1).indices, True)


@torch.inference_mode()
def score_channels(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor,
                   activations: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                   selected: torch.Tensor | None = None, share_flat: bool = True,
                   mask_align_corners: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   channels_last: bool | None = None, precision: str = "fp32") -> RegionScores:
    """Score every selected channel ``k`` of every image ``n``: ``s_nk = f(m(x_n, M_nk))_{c_n}``.

    Masked inputs are built chunk by chunk (``chunk_size`` per forward) in one reused buffer,
    mixing images of the batch; scores stay on the device (no host sync inside the loop).
    ``selected`` (``N×K`` booleans, default all) restricts scoring (top-k mode); unselected
    channels get ``-inf`` so that ``softmax`` gives them ``α = 0``. With ``share_flat`` the flat
    channels reuse the baseline score instead of a forward pass each. ``progress(done, total)``
    is called after each chunk.

    Speed options, all exact but the last: the buffer is built ``channels_last`` when
    ``channels_last`` is true (default ``None``: when the network's weights are), so the first
    convolution needs no layout conversion. ``precision="bf16"`` / ``"fp16"`` runs the masked
    passes under autocast — approximate, off by default; the baseline pass stays fp32. A
    :class:`~fusioncam.models.LoadedModel` runs the masked passes through its compiled scoring
    network once that is ready (equal logits to ~1e-6; :mod:`fusioncam.compiled`).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {chunk_size}")
    check_precision(precision)
    device = x.device
    size = tuple(x.shape[-2:])
    activations = to_device(activations.float(), device)
    targets = to_device(targets, device)
    baseline_logits = module(baseline).float()
    base_scores = baseline_logits.gather(1, targets[:, None])              # N×1

    flat = flat_channels(activations)
    chosen = torch.ones_like(flat) if selected is None else selected.to(device)
    scores = torch.full(flat.shape, float("-inf"), device=device)
    if share_flat:
        scores = torch.where(chosen & flat, base_scores.expand_as(scores), scores)
        chosen = chosen & ~flat
    jobs = chosen.nonzero()                                                 # J×2: (image, channel)

    if channels_last is None:
        channels_last = prefers_channels_last(module)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    diff = x - baseline
    # Fewer jobs than a chunk: the power of two ≥ the job count, so a compiled graph's shape is one of
    # a few (a request pads its last chunk to this size, never compiles one per image).
    rows = min(chunk_size, 1 << max(len(jobs) - 1, 0).bit_length())
    buffer = torch.empty((rows, *x.shape[1:]), device=device, dtype=x.dtype, memory_format=layout)
    for start in range(0, len(jobs), chunk_size):
        image_idx, channel_idx = jobs[start:start + chunk_size].unbind(1)
        count = len(image_idx)
        masks = normalize(upsample(activations[image_idx, channel_idx].unsqueeze(1), size, mask_align_corners))
        batch = buffer[:count]                       # keeps the buffer's layout
        torch.mul(diff.index_select(0, image_idx), masks, out=batch)
        batch.add_(baseline.index_select(0, image_idx))
        logits = _masked_pass(module, batch, rows, precision)
        scores[image_idx, channel_idx] = logits.gather(1, targets[image_idx, None]).squeeze(1).float()
        if progress is not None:
            progress(start + count, len(jobs))
    masked = torch.bincount(jobs[:, 0], minlength=len(x)) if len(jobs) else torch.zeros(len(x), dtype=torch.long)
    return RegionScores(scores=scores, baseline_logits=baseline_logits, masked_passes=masked,
                        flat_channels=flat.sum(1))


def _masked_pass(module: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, rows: int,
                 precision: str) -> torch.Tensor:
    """The logits of one chunk of masked inputs: a :class:`LoadedModel` scores it with
    :meth:`~LoadedModel.score` (its compiled graph once ready, every chunk padded to ``rows`` so
    one graph serves all), any other callable runs under ``precision``'s autocast."""
    if isinstance(module, LoadedModel):
        return module.score(batch, pad_to=rows, precision=precision)
    with autocast(batch.device, precision):
        return module(batch)


def region_map(activations: torch.Tensor, scores: torch.Tensor, size: tuple[int, int],
               relu_before_upsample: bool = False) -> torch.Tensor:
    """``L_reg = N(ReLU(Σ_k α_k up(A_k)))`` with ``α = softmax_k(s)``, ``N×H×W``.

    ``up`` is linear, so ``Σ_k α_k up(A_k) = up(Σ_k α_k A_k)``: the sum is taken at the layer's
    resolution. ``relu_before_upsample`` gives ``N(up(ReLU(Σ_k α_k A_k)))`` instead (the order
    pytorch-grad-cam uses), for comparisons.
    """
    alpha = torch.softmax(scores.float(), dim=1)
    cam = (alpha[:, :, None, None] * activations.float().to(alpha.device)).sum(1)
    if relu_before_upsample:
        return normalize(upsample(cam.clamp(min=0), size))
    return normalize(upsample(cam, size).clamp(min=0))
