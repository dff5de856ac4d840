"""Region maps: exact, batched Score-CAM and its opt-in top-k approximation.

Score-CAM per METHOD.md §2: ``M_k = N(up(A_k))``, ``s_k = f(m(x, M_k))_c`` (logit),
``α = softmax_k(s)``, ``L_reg = N(ReLU(Σ_k α_k up(A_k)))``. A flat channel (max = min) has
``M_k = 0``, so its masked input *is* the baseline: all flat channels share the score
``f(x_b)_c``, computed once in the baseline pass — exact, not an approximation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .backend import autocast, check_precision, math_mode, prefers_channels_last, to_device
from .fusion import normalize, upsample
from .models import LoadedModel


@dataclass
class RegionScores:
    """Channel scores for a batch: ``scores`` is ``N×K`` (``-inf`` for channels left out by
    top-k, or not scored yet in a partial result), ``baseline_logits`` is ``N×C`` (the logits of
    ``x_b``), ``masked_passes`` counts per image the masked inputs sent through the network so far
    (the baseline pass not included), ``flat_channels`` per image the channels whose map is
    constant, ``done``/``total`` the masked passes made and due for the whole batch, and
    ``warnings`` what the caller should be told (an out-of-memory fallback)."""

    scores: torch.Tensor
    baseline_logits: torch.Tensor
    masked_passes: torch.Tensor
    flat_channels: torch.Tensor
    done: int = 0
    total: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        """The share of the due masked passes made (1 when none were due)."""
        return self.done / self.total if self.total else 1.0


def flat_channels(activations: torch.Tensor) -> torch.Tensor:
    """``N×K`` booleans: channels whose map is constant (max = min)."""
    return activations.amax(dim=(-2, -1)) == activations.amin(dim=(-2, -1))


def top_k_channels(channel_weights: torch.Tensor, k: int) -> torch.Tensor:
    """``N×K`` booleans selecting the ``k`` largest channel weights of each image."""
    k = max(1, min(k, channel_weights.shape[-1]))
    chosen = torch.zeros_like(channel_weights, dtype=torch.bool)
    return chosen.scatter_(1, channel_weights.topk(k, dim=1).indices, True)


def scoring_order(chosen: torch.Tensor, priority: torch.Tensor | None) -> torch.Tensor:
    """``J×2`` jobs ``(image, channel)`` for the ``chosen`` (``N×K``) channels: each image's channels
    by decreasing ``priority`` (``N×K``; ties and ``None`` keep channel order), the images
    interleaved rank by rank, so a partial result has every image equally far along."""
    if priority is None:
        return chosen.nonzero()
    ranked = torch.sort(priority.float().masked_fill(~chosen, float("-inf")), dim=1, descending=True,
                        stable=True).indices                                 # N×K, best first
    counts = chosen.sum(1)
    rank = torch.arange(chosen.shape[1], device=chosen.device)
    valid = rank[None, :] < counts[:, None]                                  # N×K: rank r exists for image n
    images = torch.arange(chosen.shape[0], device=chosen.device)[:, None].expand_as(ranked)
    by_rank = valid.t().nonzero()                                            # (rank, image), rank-major
    return torch.stack([images.t()[by_rank[:, 0], by_rank[:, 1]], ranked.t()[by_rank[:, 0], by_rank[:, 1]]], 1)


@torch.inference_mode()
def iter_channel_scores(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor,
                        activations: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                        selected: torch.Tensor | None = None, share_flat: bool = True,
                        mask_align_corners: bool = False, channels_last: bool | None = None,
                        precision: str = "fp32", priority: torch.Tensor | None = None,
                        stops: tuple[float, ...] = (),
                        turn: Callable[[], contextlib.AbstractContextManager] | None = None,
                        ) -> Iterator[RegionScores]:
    """Score every selected channel ``k`` of every image ``n``, ``s_nk = f(m(x_n, M_nk))_{c_n}``,
    yielding the scores known so far after each chunk; the last yield is complete.

    Masked inputs are built chunk by chunk (``chunk_size`` per forward) in one reused buffer,
    mixing images of the batch; scores stay on the device (no host sync inside the loop). Every
    chunk is padded to ``chunk_size`` rows, so no image brings a network input shape that an
    earlier one did not (cuDNN builds a plan, a compiled graph a graph, per shape). ``selected``
    (``N×K`` booleans, default all) restricts scoring (top-k mode); unselected channels get
    ``-inf`` so that ``softmax`` gives them ``α = 0``. With ``share_flat`` the flat channels reuse
    the baseline score instead of a forward pass each.

    Anytime: channels are scored by decreasing ``priority`` (``N×K``, default channel order), and a
    yielded result is METHOD.md's partial Score-CAM: channels not scored yet hold ``-inf``. A chunk
    also ends at each fraction in ``stops`` of the passes, so a result exists there however large
    the chunk. The yielded ``scores`` is the live tensor: copy what you keep. ``turn()``, when
    given, is entered around each chunk's forward (a scheduler sharing the network between
    requests, :mod:`fusioncam.scheduler`).

    Speed options, all exact but the last: the buffer is built ``channels_last`` when
    ``channels_last`` is true (default ``None``: when the network's weights are), so the first
    convolution needs no layout conversion. ``precision="tf32"`` lets convolutions and matmuls use
    TF32 (CUDA), ``"bf16"`` / ``"fp16"`` runs the masked passes under autocast — approximate, off by
    default; the baseline pass stays fp32. A :class:`~fusioncam.models.LoadedModel` runs the masked
    passes through its compiled scoring network once that is ready (equal logits to ~1e-6;
    :mod:`fusioncam.compiled`). A CUDA out-of-memory error halves the chunk once and says so in
    ``warnings``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {chunk_size}")
    check_precision(precision)
    turn = turn or contextlib.nullcontext
    device = x.device
    size = tuple(x.shape[-2:])
    activations = to_device(activations.float(), device)
    targets = to_device(targets, device)
    flat = flat_channels(activations)
    chosen = torch.ones_like(flat) if selected is None else selected.to(device)
    if share_flat:
        chosen = chosen & ~flat
    jobs = scoring_order(chosen, None if priority is None else to_device(priority, device))   # J×2
    total = len(jobs)
    with turn(), math_mode("fp32"):
        baseline_logits = module(baseline).float()
    base_scores = baseline_logits.gather(1, targets[:, None])              # N×1
    scores = torch.full(flat.shape, float("-inf"), device=device)
    if share_flat:
        base_chosen = flat if selected is None else flat & selected.to(device)
        scores = torch.where(base_chosen, base_scores.expand_as(scores), scores)
    masked = torch.zeros(len(x), dtype=torch.long, device=device)
    result = RegionScores(scores, baseline_logits, masked, flat.sum(1), 0, total)
    if channels_last is None:
        channels_last = prefers_channels_last(module)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    diff = x - baseline
    cuts = sorted({min(total, max(1, round(f * total))) for f in stops if 0 < f < 1} | {total})
    rows, start, warnings = chunk_size, 0, []
    buffer = torch.empty((rows, *x.shape[1:]), device=device, dtype=x.dtype, memory_format=layout)
    while start < total:
        end = min(start + rows, next(c for c in cuts if c > start))
        image_idx, channel_idx = jobs[start:end].unbind(1)
        count = end - start
        masks = normalize(upsample(activations[image_idx, channel_idx].unsqueeze(1), size, mask_align_corners))
        batch = buffer[:count]                       # keeps the buffer's layout
        torch.mul(diff.index_select(0, image_idx), masks, out=batch)
        batch.add_(baseline.index_select(0, image_idx))
        try:
            with turn():
                logits = _pass(module, batch, rows, precision)
        except torch.OutOfMemoryError:
            if rows == 1 or warnings:
                raise
            torch.cuda.empty_cache()
            rows = max(1, rows // 2)
            buffer = torch.empty((rows, *x.shape[1:]), device=device, dtype=x.dtype, memory_format=layout)
            warnings.append(f"The GPU ran out of memory at {chunk_size} masked images per pass; this "
                            f"explanation continued at {rows}.")
            continue
        scores[image_idx, channel_idx] = logits.gather(1, targets[image_idx, None]).squeeze(1).float()
        masked.index_add_(0, image_idx, torch.ones_like(image_idx))
        start = end
        result = RegionScores(scores, baseline_logits, masked, result.flat_channels, start, total, tuple(warnings))
        if start < total:
            yield result
    yield result


def score_channels(*args: Any, progress: Callable[[int, int], None] | None = None,
                   **kwargs: Any) -> RegionScores:
    """:func:`iter_channel_scores` run to the end (the same arguments); ``progress(done, total)`` is
    called after each chunk. Returns the complete scores."""
    for result in iter_channel_scores(*args, **kwargs):
        if progress is not None:
            progress(result.done, result.total)
    return result


def _pass(module: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, rows: int,
          precision: str) -> torch.Tensor:
    """The logits of one batch of inference inputs, padded to ``rows``: a :class:`LoadedModel`
    scores it with :meth:`~LoadedModel.score` (its compiled graph once ready, every chunk padded so
    one graph serves all), any other callable runs under ``precision``'s TF32 setting and autocast
    on the padded batch."""
    if isinstance(module, LoadedModel):
        return module.score(batch, pad_to=rows, precision=precision)
    count = len(batch)
    if count < rows:
        batch = torch.cat([batch, batch.new_zeros((rows - count, *batch.shape[1:]))])
    with torch.inference_mode(), math_mode(precision), autocast(batch.device, precision):
        return module(batch)[:count]


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
