"""The network stages the app runs, each one GPU call returning CPU results.

On Hugging Face ZeroGPU each decorated function runs in a forked process: it finds its model
in :data:`~fusioncam.ui.catalog.MODELS` (loaded beforehand in the main process, so the fork
inherits it) and returns the evidence, the maps and the report, all on the CPU, so the
per-session cache lives outside the GPU function. Without the ``spaces`` package the
decorator is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fusioncam.backend import gpu_decorator
from fusioncam.explain import Evidence, Explanation, FusionParams, capture_evidence, derive, score_regions

from .catalog import MODELS
from .faithfulness import FaithfulnessView, score_explanation

Derived = tuple[Evidence, dict[str, np.ndarray], dict[str, Any]]
MAX_STEPS = 224   # the most deletion/insertion steps the page offers (each step is 2 forwards a map)


@gpu_decorator(duration=60)
def gather_gradients(spec: str, image: Image.Image, target: int | None, layer: str | None,
                     baseline: str) -> Evidence:
    """Stage 1: one forward + backward; the evidence already yields the gradient maps."""
    [evidence] = capture_evidence(MODELS.get(spec), [image], target, layer, baseline)
    return evidence


@gpu_decorator(duration=120)
def gather_regions(spec: str, evidence: Evidence, region_method: str, top_k: int | None, params: FusionParams,
                   progress: Callable[[int, int], None] | None = None) -> Derived:
    """Stage 2: the Score-CAM masked passes (the slow part), then every map and weight."""
    model = MODELS.get(spec)
    score_regions(model, [evidence], region_method, top_k, progress=progress)
    [explanation] = derive(model, [evidence], params)
    return evidence, explanation.maps, explanation.report


@gpu_decorator(duration=30)
def refuse(spec: str, evidence: Evidence, params: FusionParams) -> Derived:
    """Re-fusion from kept evidence: no Score-CAM, at most two scoring forwards for a new θ."""
    [explanation] = derive(MODELS.get(spec), [evidence], params.validated())
    return evidence, explanation.maps, explanation.report


@gpu_decorator(duration=120)
def faithfulness(spec: str, evidence: Evidence, params: FusionParams, maps: dict[str, np.ndarray],
                 report: dict[str, Any], extra_methods: Sequence[str], n_steps: int,
                 progress: Callable[[float, str], None] | None = None) -> FaithfulnessView:
    """Faithfulness of every map shown (and ``extra_methods``): batched deletion/insertion passes."""
    explanation = Explanation(MODELS.get(spec), evidence, params, maps, report)
    return score_explanation(explanation, extra_methods, n_steps, progress)
