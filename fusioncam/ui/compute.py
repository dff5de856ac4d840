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

The ``duration`` of each GPU function is what ZeroGPU books (shorter bookings queue ahead of
longer ones). They are set from the H200 figures (DESIGN.md "GPU facts"), with a fresh worker's
cold input shapes counted in: a whole explanation took 1.8–4.3 s cold and ~0.08 s warm on the
bundled model, a ViT-B ~0.6 s warm; the bookings leave ten times that for a slice of the chip
and a larger hub model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from fusioncam.backend import gpu_decorator, on_zero_gpu
from fusioncam.explain import (
    Explanation,
    FusionParams,
    GradientEvidence,
    RegionEvidence,
    capture_evidence,
    derive,
    iter_regions,
    needs_scoring,
)
from fusioncam.scheduler import CHUNK, GRADIENT, NetworkScheduler

from .catalog import MODELS
from .faithfulness import FaithfulnessView, score_explanation

Derived = tuple[RegionEvidence, dict[str, np.ndarray], dict[str, Any]]
MAX_STEPS = 224   # the most deletion/insertion steps the page offers (each step is 2 forwards a map)
SCORE_CAM_PROGRESS = "Score-CAM: masking the image channel by channel…"
#: A partial update is shown at these shares of the masked passes, however fast. The first comes
#: early: with 4 visitors sharing 2 cores a 5 % stop came 2.7 s after the click (benchmarks/load.py);
#: 2 % comes about a second sooner, a coarser but labelled picture (its Score-CAM map correlates 0.94
#: on average with the exact one, benchmarks/README.md) that the next updates refine.
ANYTIME_STOPS = (0.02, 0.25)
UPDATE_EVERY_S = 1.0           # and otherwise about this often
#: The network's turns in this process. Two at a time: one turn's host work (building masks, reading
#: scores) overlaps the other's forward (measured with benchmarks/load.py on 2 cores: 4 visitors at
#: once finished their explanations in half the time with two slots than with one).
SCHEDULER = NetworkScheduler(slots=2)


@gpu_decorator(duration=20)
def gather_gradients(spec: str, image: Image.Image, target: int | None, layer: str | None,
                     baseline: str, owner: str | None = None, priority: int = GRADIENT) -> GradientEvidence:
    """Stage 1: one forward + backward; the record already yields the gradient maps. With an
    ``owner`` (the request), it runs as a turn at ``priority`` (default
    :data:`~fusioncam.scheduler.GRADIENT`: ahead of every Score-CAM chunk, whoever owns it)."""
    with _turn(owner, priority)():
        [evidence] = capture_evidence(MODELS.get(spec), [image], target, layer, baseline)
    return evidence


@gpu_decorator(duration=45)
def stream_regions(spec: str, evidence: GradientEvidence, region_method: str, top_k: int | None,
                   params: FusionParams, owner: str | None = None, priority: int = CHUNK) -> Iterator[Derived]:
    """Stage 2 and 3, anytime: Score-CAM's masked passes, most telling channels first
    (:func:`fusioncam.explain.iter_regions`), yielding every map and weight from the channels
    scored so far about once every :data:`UPDATE_EVERY_S` seconds and at each of
    :data:`ANYTIME_STOPS` (so at least twice before the end), then the exact explanation last.
    Each report says which it is (``report["progress"]``). With an ``owner``, every chunk and
    derive step is a turn of the process's :data:`SCHEDULER` at ``priority`` (round robin with the
    other requests); under ZeroGPU the worker has the GPU to itself and no turns are taken."""
    model, progress = MODELS.get(spec), gr.Progress()
    turn = _turn(owner, priority)
    carried: dict[tuple, float] = {}   # p(m(x, L_den)): the same for every update
    stops, shown = list(ANYTIME_STOPS), time.monotonic()
    for [regions] in iter_regions(model, [evidence], region_method, top_k, stops=ANYTIME_STOPS, turn=turn):
        fraction = regions.scored_fraction
        progress(fraction, desc=SCORE_CAM_PROGRESS)
        crossed = bool(stops) and fraction >= stops[0] - 1e-9
        while stops and fraction >= stops[0] - 1e-9:
            stops.pop(0)
        if not regions.final and not crossed and time.monotonic() - shown < _update_interval(owner):
            continue
        with turn():
            [explanation] = derive(model, [replace(regions, probabilities=carried)], params)
        carried = {key: value for key, value in explanation.evidence.probabilities.items() if key[0] == "denoised"}
        shown = time.monotonic()
        yield explanation.evidence, explanation.maps, explanation.report


def gather_regions(spec: str, evidence: GradientEvidence, region_method: str, top_k: int | None,
                   params: FusionParams, owner: str | None = None, priority: int = CHUNK) -> Derived:
    """Stage 2 and 3 to the end (:func:`stream_regions`' last, exact update)."""
    *_partial_updates, final = stream_regions(spec, evidence, region_method, top_k, params, owner, priority)
    return final


def _update_interval(owner: str | None) -> float:
    """Seconds between two anytime updates of one request: :data:`UPDATE_EVERY_S` alone, that times
    the requests sharing the network otherwise — each then progresses at 1/N of the machine, so an
    update still shows as much new as a lone visitor's every second, and the updates (a derive step,
    pictures, a payload to send) cost the machine the same whatever the crowd."""
    if owner is None or on_zero_gpu():
        return UPDATE_EVERY_S
    return UPDATE_EVERY_S * max(1, SCHEDULER.requests())


def _turn(owner: str | None, priority: int) -> Callable[[], AbstractContextManager]:
    """What a pass of ``owner`` enters: a scheduler turn, or nothing without an owner or under
    ZeroGPU (where each GPU call runs in a worker of its own and the main process's scheduler must
    never gate it)."""
    if owner is None or on_zero_gpu():
        return nullcontext
    return partial(SCHEDULER.turn, owner, priority)


def refuse(spec: str, evidence: RegionEvidence, params: FusionParams) -> Derived:
    """Re-fusion from kept evidence: on the GPU only when a scoring forward is needed (a new θ or
    gradient method; a weight mode that flips the combined map), else right here on the CPU."""
    params = params.validated()
    if needs_scoring(evidence, params):
        return _refuse_with_network(spec, evidence, params)
    [explanation] = derive(MODELS.get(spec), [evidence], params)
    return explanation.evidence, explanation.maps, explanation.report


@gpu_decorator(duration=15)
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
