"""The network stages the app runs: only work that needs the network is a GPU function.

On Hugging Face ZeroGPU each ``@gpu_decorator`` function runs in a forked worker that receives
its arguments and returns its result **pickled** (``spaces`` 0.51, ``zero/wrappers.py``). So
every argument here is plain data — a model *spec* (the worker finds the model in
:data:`~fusioncam.ui.catalog.MODELS`, loaded beforehand in the main process, so the fork
inherits it), immutable stage records, numbers, numpy maps — never a closure, lock, module or
open file, and every result is CPU data. Progress reaches the page from inside the worker
through a ``gr.Progress`` made there (``spaces`` forwards Gradio's progress context into the
worker). Without the ``spaces`` package the decorator is a no-op and these are plain calls.

Re-fusion books a GPU only when it needs a forward (:func:`fusioncam.explain.needs_scoring`):
a λ change never does, a weight-mode change only when it flips the combined map's sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from fusioncam.backend import gpu_decorator
from fusioncam.explain import (
    Explanation,
    FusionParams,
    GradientEvidence,
    RegionEvidence,
    capture_evidence,
    derive,
    needs_scoring,
    score_regions,
)

from .catalog import MODELS
from .faithfulness import FaithfulnessView, score_explanation

Derived = tuple[RegionEvidence, dict[str, np.ndarray], dict[str, Any]]
MAX_STEPS = 224   # the most deletion/insertion steps the page offers (each step is 2 forwards a map)
SCORE_CAM_PROGRESS = "Score-CAM: masking the image channel by channel…"


@gpu_decorator(duration=60)
def gather_gradients(spec: str, image: Image.Image, target: int | None, layer: str | None,
                     baseline: str) -> GradientEvidence:
    """Stage 1: one forward + backward; the record already yields the gradient maps."""
    [evidence] = capture_evidence(MODELS.get(spec), [image], target, layer, baseline)
    return evidence


@gpu_decorator(duration=120)
def gather_regions(spec: str, evidence: GradientEvidence, region_method: str, top_k: int | None,
                   params: FusionParams) -> Derived:
    """Stage 2: the Score-CAM masked passes (the slow part, with a progress bar), then every
    map and weight (stage 3)."""
    model, progress = MODELS.get(spec), gr.Progress()

    def report(done: int, total: int) -> None:
        progress((done, total), desc=SCORE_CAM_PROGRESS, unit="batches")

    [regions] = score_regions(model, [evidence], region_method, top_k, progress=report)
    [explanation] = derive(model, [regions], params)
    return explanation.evidence, explanation.maps, explanation.report


def refuse(spec: str, evidence: RegionEvidence, params: FusionParams) -> Derived:
    """Re-fusion from kept evidence: on the GPU only when a scoring forward is needed (a new θ or
    gradient method; a weight mode that flips the combined map), else right here on the CPU."""
    params = params.validated()
    if needs_scoring(evidence, params):
        return _refuse_with_network(spec, evidence, params)
    [explanation] = derive(MODELS.get(spec), [evidence], params)
    return explanation.evidence, explanation.maps, explanation.report


@gpu_decorator(duration=30)
def _refuse_with_network(spec: str, evidence: RegionEvidence, params: FusionParams) -> Derived:
    """Re-fusion that needs at most two batch-1 scoring forwards (denoised, combined)."""
    [explanation] = derive(MODELS.get(spec), [evidence], params)
    return explanation.evidence, explanation.maps, explanation.report


@gpu_decorator(duration=120)
def faithfulness(spec: str, evidence: RegionEvidence, params: FusionParams, maps: dict[str, np.ndarray],
                 report: dict[str, Any], extra_methods: Sequence[str], n_steps: int) -> FaithfulnessView:
    """Faithfulness of every map shown (and ``extra_methods``): batched deletion/insertion passes."""
    progress = gr.Progress()

    def report_progress(fraction: float, label: str) -> None:
        progress(fraction, desc=f"Faithfulness: {label}")

    explanation = Explanation(MODELS.get(spec), evidence, params, maps, report)
    return score_explanation(explanation, extra_methods, n_steps, report_progress)
