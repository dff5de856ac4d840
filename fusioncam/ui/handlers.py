"""What each page event does: UI values in, UI values out. ``app.py`` only wires these up.

Output order contracts (``app.py`` lists its components in the same order):

- :data:`EXPLAIN_OUTPUTS` for :func:`explain`, :func:`explain_new_image`, :func:`explain_changed_option`,
  :func:`explain_new_model` and :func:`clear`;
- :data:`REFINE_OUTPUTS` for :func:`refine`;
- :data:`FAITHFULNESS_OUTPUTS` for :func:`faithfulness`.

Every failure reaches the page as one plain sentence (a ``gr.Error``), never a stack trace.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from fusioncam.backend import on_zero_gpu
from fusioncam.capture import CaptureError
from fusioncam.explain import MAP_NAMES, FusionParams, RegionEvidence, gradient_preview
from fusioncam.images import load_image
from fusioncam.live import blank_payload, disagreement_share, live_payload
from fusioncam.models import BUNDLED, LoadedModel

from . import compute, figures, text
from .catalog import (
    DEFAULT_LAYER,
    MODELS,
    TOP_CLASS,
    class_choices,
    layer_choices,
    parse_layer,
    parse_model,
    parse_target,
)
from .examples import ExampleCache
from .export import export_html, export_zip
from .faithfulness import HEADERS
from .previews import preview_file
from .session import KEPT_SIDE, Generations, Request, Session, display_image, file_digest

EXPLAIN_OUTPUTS = ("session", "summary", "top5", *(f"map-{name}" for name in MAP_NAMES), "weights", "hover",
                   "report", "target-class", "layer")
REFINE_OUTPUTS = ("session", "summary", *(f"map-{name}" for name in MAP_NAMES), "weights", "hover", "report")
COMMIT_OUTPUTS = ("session", "summary", "hover", "report")
LIVE_MAPS = ("fusion", "agreement")   # drawn by the page itself from one payload (fusioncam.ui.live)
REGION_CARDS = ("scorecam", "combined")   # static cards that a partial (anytime) update redraws
PARTIAL_SIDE = 320   # the longer side of a partial update's static pictures
FAITHFULNESS_OUTPUTS = ("faithfulness-status", "faithfulness-table", "deletion-curves", "insertion-curves")
NO_IMAGE = "Please upload an image first (or click one of the examples below it)."
NOTHING_TO_SCORE = "Explain an image first (on the Explain tab); then its maps can be scored here."
OUT_OF_MEMORY = ("The server ran out of memory for this request; please try again in a minute, "
                 "or with a smaller image or the bundled model.")
UNEXPECTED = "Something went wrong on the server while handling this request; please try again."
EXPORT_DIR = Path(tempfile.gettempdir()) / "fusioncam-exports"
EXPORT_MAX_AGE_S = 3600
PROGRESS = gr.Progress()   # Gradio finds the progress bar by this default value
GENERATIONS = Generations()
EXAMPLE_IMAGES = sorted(str(path) for path in (Path(__file__).resolve().parents[2] / "assets").glob("*.jpg"))
EXAMPLES = ExampleCache(EXAMPLE_IMAGES, BUNDLED)
WAIT_POLL_S = 0.1    # how often a waiting request checks whether its turn is near (and refreshes its estimate)
MAX_WAIT_NOTICE_S = 60.0   # … for at most this long; then the request queues for its turn silently
_REQUESTS = itertools.count()   # numbers each request: its owner name for the scheduler
LOG = logging.getLogger(__name__)


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (Python, CUDA, or PyTorch's CPU allocator)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(
        words in str(error) for words in ("out of memory", "can't allocate memory"))


@contextmanager
def user_errors(title: str = "Cannot explain this") -> Iterator[None]:
    r"""Turn every failure into a ``gr.Error`` with one plain sentence; the app keeps serving.

    The library's own errors (``InputError``, ``ModelError``: ``ValueError``\ s; ``CaptureError``)
    already are plain sentences. Running out of memory frees the CUDA cache and says so; anything
    else is logged with its traceback on the server and reported as a generic sentence.
    """
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, CaptureError) as error:
        raise gr.Error(str(error), title=title) from None
    except Exception as error:
        if _out_of_memory(error):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise gr.Error(OUT_OF_MEMORY, title="Out of memory") from None
        LOG.exception("unexpected error in a page event")
        raise gr.Error(UNEXPECTED, title=title) from None


def _live_payload(session: Session) -> dict[str, Any]:
    """What the page's live cards (fused and agreement maps) draw for the session's explanation."""
    explanation = session.explanation(MODELS.get(session.request.model))
    return live_payload(explanation, session.generation, session.display, session.colormap, session.opacity)


def _pictures(session: Session, names: Sequence[str] = MAP_NAMES) -> list[Any]:
    """The values of the ``map-*`` outputs in ``names``: overlays drawn here for the static maps
    (the region-based ones with Score-CAM's progress written on them while it is partial), one
    payload for the live cards (the page itself fuses and draws them, following λ, and shows the
    progress in their captions)."""
    static = [name for name in names if name not in LIVE_MAPS]
    progress = session.report.get("progress")
    partial = progress is not None and not progress["final"]
    # A partial picture is a preview, replaced within seconds: drawn at half the size, sent as JPEG.
    photo = display_image(session.display, PARTIAL_SIDE) if partial else session.display
    drawn: dict[str, Any] = dict(zip(static, figures.overlays(photo, session.maps, session.colormap,
                                                              session.opacity, tuple(static)), strict=True))
    if partial:
        for name in set(REGION_CARDS) & set(drawn):
            drawn[name] = figures.captioned(drawn[name], text.progress_caption(progress))
        drawn = {name: preview_file(picture) for name, picture in drawn.items()}
    payload = _live_payload(session) if set(names) & set(LIVE_MAPS) else None
    return [drawn.get(name, payload) for name in names]


def _summary(session: Session) -> str:
    return text.summary(session.report, disagreement_share(session.maps["agreement"]))


def _finished(session: Session) -> tuple:
    """The :data:`EXPLAIN_OUTPUTS` values for a finished explanation (the dropdowns stay as they are)."""
    return (session, _summary(session), text.top5_label(session.report["top5"]), *_pictures(session),
            figures.weights_figure(session.report),
            figures.hover_figure(session.evidence.image, session.maps, session.colormap),
            session.report, gr.skip(), gr.skip())


def session_key(request: gr.Request | None) -> str:
    """The browser session an event came from (Gradio's session hash)."""
    return getattr(request, "session_hash", None) or "no-session"


def explain(image: str | None, model_spec: str, target: str | int | None, layer: str | None, theta: float,
            strength: float, weights: str, baseline: str, gradient_method: str, region_method: str,
            top_k: float, colormap: str, opacity: float, session: Session | None, request: gr.Request = None,
            progress: gr.Progress = PROGRESS) -> Iterator[tuple]:
    """Explain ``image``: the gradient maps first, then Score-CAM with a progress bar, then the rest.

    When only the fusion parameters differ from the session's current run, the kept evidence is
    re-fused instead (no Score-CAM). A new explanation starts a new generation of the session:
    from then on nothing of the previous one is shown or changed, and if a newer explanation
    starts before this one finishes, this one's result is dropped.
    """
    key = session_key(request)
    with user_errors():
        if not image:
            raise ValueError(NO_IMAGE)
        picture = load_image(image)
        spec = parse_model(model_spec)
        progress(0, desc=f"Loading model {spec}…")
        model = MODELS.get(spec)
        target_index, layer_name = parse_target(target, model.class_names), parse_layer(layer)
        params = FusionParams(float(theta), float(strength), weights, gradient_method).validated()
        topk = round(top_k) if region_method == "scorecam-topk" else None
        wanted = Request(file_digest(image), spec, layer_name, target_index, baseline, region_method, topk)
        if session is not None and session.request == wanted and GENERATIONS.is_current(key, session.generation):
            evidence, maps, report = compute.refuse(spec, session.evidence, params)
            yield _finished(session.with_fusion(evidence, params, maps, report).with_style(colormap, opacity))
            return
    token = GENERATIONS.claim(key, (wanted, params, colormap, opacity))
    if token is None:          # this page is explaining exactly this already: its result is on the way
        yield _unchanged()
        return
    try:
        with MODELS.using(spec):      # the model stays loaded for the whole run, whatever else is asked for
            yield from _explain_anew(key, wanted, picture, model, params, colormap, opacity, progress)
    finally:
        GENERATIONS.release(key, token)


def _explain_anew(key: str, wanted: Request, picture: Image.Image, model: LoadedModel, params: FusionParams,
                  colormap: str, opacity: float, progress: gr.Progress) -> Iterator[tuple]:
    """The network stages of :func:`explain` for ``wanted``: the gradient maps, then Score-CAM's
    anytime updates and the exact explanation last, under a new generation of session ``key`` once
    the gradient pass has succeeded. Every pass is a turn of the process's scheduler
    (:data:`compute.SCHEDULER`): the gradient stage ahead of every Score-CAM chunk, the chunks round
    robin with other visitors'. An example under the default settings comes from the kept copy."""
    owner = f"{key}#{next(_REQUESTS)}"
    try:
        kept_example = EXAMPLES.get(wanted, model)
        if kept_example is not None:
            yield from _from_kept(key, wanted, kept_example, model, params, colormap, opacity)
            return
        yield from _compute_anew(key, owner, wanted, picture, model, params, colormap, opacity, progress)
    finally:
        compute.SCHEDULER.done(owner)


def _from_kept(key: str, wanted: Request, evidence: RegionEvidence, model: LoadedModel, params: FusionParams,
               colormap: str, opacity: float) -> Iterator[tuple]:
    """An explanation from kept evidence (an example): re-fused, no Score-CAM."""
    with user_errors():
        evidence, maps, report = compute.refuse(wanted.model, evidence, params)
        generation = GENERATIONS.begin(key)
    session = Session(wanted, generation, evidence, params, maps, report, display_image(evidence.image), colormap,
                      opacity)
    *outputs, _target, _layer = _finished(session)
    yield (*outputs, gr.update(choices=class_choices(model.class_names, report["top5"]), value=TOP_CLASS),
           gr.update(choices=layer_choices(model), value=DEFAULT_LAYER))


def _compute_anew(key: str, owner: str, wanted: Request, picture: Image.Image, model: LoadedModel,
                  params: FusionParams, colormap: str, opacity: float, progress: gr.Progress) -> Iterator[tuple]:
    """Grad-CAM, then the honest wait for Score-CAM's first turn, then its updates."""
    spec, target_index, layer_name = wanted.model, wanted.target, wanted.layer
    with user_errors():
        progress(0.02, desc="Grad-CAM: one pass through the network…")
        evidence = compute.gather_gradients(spec, picture, target_index, layer_name, wanted.baseline, owner)
        # Only a request that got this far replaces the current explanation: one refused before
        # (a bad file, layer or class) leaves the page and its explanation as they were.
        generation = GENERATIONS.begin(key)
    started = time.monotonic()
    display = display_image(evidence.image)
    top5 = evidence.top_predictions(model.class_names)
    preview = gradient_preview(evidence, params.theta, params.gradient_method)
    target_value = TOP_CLASS if target_index is None else str(target_index)
    blank = blank_payload(generation)     # empties the live cards; older payloads can no longer land
    gradient_pictures = figures.overlays(display, preview, colormap, opacity, ("gradcam", "denoised"))
    yield (gr.skip(), text.progress_summary(evidence, model.class_names), text.top5_label(top5),
           *(preview_file(picture) for picture in gradient_pictures),   # the final PNGs replace them
           None, None, blank, blank, None, None, None,
           gr.update(choices=class_choices(model.class_names, top5), value=target_value),
           gr.update(choices=layer_choices(model), value=layer_name or DEFAULT_LAYER))
    yield from _wait_for_first_turn(owner, progress)
    kept = replace(evidence, image=display_image(evidence.image, KEPT_SIDE))  # a bounded copy
    updates = compute.stream_regions(spec, kept, wanted.region_method, wanted.top_k, params, owner)
    try:
        with user_errors():
            for regions, maps, report in updates:
                if not GENERATIONS.is_current(key, generation):   # a newer explanation replaced this one
                    yield _unchanged()
                    return
                session = Session(wanted, generation, regions, params, maps, report, display, colormap, opacity)
                if regions.final:
                    EXAMPLES.offer(wanted, model, regions)
                    yield _finished(session)
                else:
                    yield _partial(session, time.monotonic() - started)
    except gr.Error as error:
        if GENERATIONS.is_current(key, generation):
            yield _failed(str(error), generation)
        raise
    finally:
        updates.close()


def _wait_for_first_turn(owner: str, progress: gr.Progress) -> Iterator[tuple]:
    """While other requests' Score-CAM goes before this one's first chunk: say how many and about
    how long, as it changes (nothing when none does, and never under ZeroGPU, where the GPU
    calls queue outside this process). It only informs: the scheduler's turns decide the order,
    so it stops as soon as nothing runs, and after :data:`MAX_WAIT_NOTICE_S` at most."""
    shown, deadline = None, time.monotonic() + MAX_WAIT_NOTICE_S
    while not on_zero_gpu() and time.monotonic() < deadline:
        wait = compute.SCHEDULER.ahead_of(owner)
        if wait.requests_ahead == 0 or not compute.SCHEDULER.busy():   # nobody ahead is running: go
            return
        words = text.waiting_summary(wait.requests_ahead, wait.seconds)
        if words != shown:
            progress(0.03, desc=words.splitlines()[-1])
            yield (gr.skip(), words, *(gr.skip() for _ in EXPLAIN_OUTPUTS[2:]))
            shown = words
        time.sleep(WAIT_POLL_S)


def _partial(session: Session, seconds: float) -> tuple:
    """The :data:`EXPLAIN_OUTPUTS` values of an anytime update: the region-based maps (③–⑥) from the
    channels scored so far, captioned with the progress, and its report (the β/γ chart waits for
    the exact weights: redrawing it every second costs a busy CPU more than it tells); the session
    keeps its last exact explanation until the final update."""
    pictures = _pictures(session, ("scorecam", "combined", *LIVE_MAPS))
    return (gr.skip(), text.partial_summary(session.report, seconds), gr.skip(), gr.skip(), gr.skip(), *pictures,
            gr.skip(), gr.skip(), session.report, gr.skip(), gr.skip())


def _unchanged() -> tuple:
    """The :data:`EXPLAIN_OUTPUTS` values that leave the page as it is."""
    return tuple(gr.skip() for _ in EXPLAIN_OUTPUTS)


def _failed(message: str, generation: int) -> tuple:
    """The :data:`EXPLAIN_OUTPUTS` values after a stage failed: no map and no session are kept,
    so the page never mixes the failed request with an older one."""
    blank = blank_payload(generation)
    maps = [blank if name in LIVE_MAPS else None for name in MAP_NAMES]
    return (None, f"### The explanation could not finish\n{message}", gr.skip(), *maps,
            None, None, None, gr.skip(), gr.skip())


def _explain_again(reset_target: bool, reset_layer: bool, clear_without_image: bool) -> Callable[..., Iterator[tuple]]:
    """A handler that explains the current image again after an input changed, with the
    ``target`` (and ``layer``) reset to the defaults when the change makes them stale; with no
    image it clears the page (``clear_without_image``) or does nothing."""

    def handler(image: str | None, model_spec: str, target: str | int | None, layer: str | None,
                theta: float, strength: float, weights: str, baseline: str, gradient_method: str,
                region_method: str, top_k: float, colormap: str, opacity: float, session: Session | None,
                request: gr.Request = None, progress: gr.Progress = PROGRESS) -> Iterator[tuple]:
        if not image:
            yield clear() if clear_without_image else _unchanged()
            return
        # A new image resets the class, except the image the session already explains (opening a
        # shared link sets it), whose class stays; a new model always resets it.
        same_image = (reset_target and not reset_layer and session is not None
                      and session.request.image_digest == file_digest(image))
        yield from explain(image, model_spec, TOP_CLASS if reset_target and not same_image else target,
                           DEFAULT_LAYER if reset_layer else layer, theta, strength, weights, baseline,
                           gradient_method, region_method, top_k, colormap, opacity, session, request, progress)

    return handler


#: A new image: explain its top prediction, or clear the page when the image was removed.
explain_new_image = _explain_again(reset_target=True, reset_layer=False, clear_without_image=True)
#: A class, layer, baseline or region option changed: explain again (nothing before an image).
explain_changed_option = _explain_again(reset_target=False, reset_layer=False, clear_without_image=False)
#: A new model: its default layer and top prediction (nothing before an image).
explain_new_model = _explain_again(reset_target=True, reset_layer=True, clear_without_image=False)


def clear() -> tuple:
    """The :data:`EXPLAIN_OUTPUTS` values of an empty page."""
    return (None, text.WAITING, None, *(None for _ in MAP_NAMES), None, None, None,
            gr.update(value=TOP_CLASS), gr.skip())


def refine(session: Session | None, theta: float, strength: float, weights: str, gradient_method: str,
           colormap: str, opacity: float, request: gr.Request = None) -> tuple:
    """Re-fuse the kept evidence with new fusion parameters, or redraw with a new colour map or
    opacity; only the maps that changed are sent again, and nothing at all when nothing changed,
    nothing has been explained yet, or the session's explanation is no longer the current one
    (a newer image is being explained: a late re-fusion of the old one must not land).

    The live cards get a new payload only when the fusion's inputs changed: the page follows λ,
    the colour map and the opacity itself."""
    skip = tuple(gr.skip() for _ in REFINE_OUTPUTS)
    key = session_key(request)
    if session is None or not GENERATIONS.is_current(key, session.generation):
        return skip
    with user_errors():
        params = FusionParams(float(theta), float(strength), weights, gradient_method).validated()
    restyled = (colormap, opacity) != (session.colormap, session.opacity)
    if params == session.params and not restyled:
        return skip
    previous = session
    if params != session.params:
        with user_errors():
            evidence, maps, report = compute.refuse(session.request.model, session.evidence, params)
        session = session.with_fusion(evidence, params, maps, report)
    if not GENERATIONS.is_current(key, session.generation):
        return skip
    session = session.with_style(colormap, opacity)
    changed = [name for name in MAP_NAMES if (name in LIVE_MAPS and params != previous.params)
               or (name not in LIVE_MAPS and (restyled or not np.array_equal(session.maps[name], previous.maps[name])))]
    drawn = dict(zip(changed, _pictures(session, changed), strict=True))
    pictures = [drawn.get(name, gr.skip()) for name in MAP_NAMES]
    return (session, _summary(session), *pictures, figures.weights_figure(session.report),
            figures.hover_figure(session.evidence.image, session.maps, colormap), session.report)


def commit_strength(session: Session | None, event: gr.EventData, request: gr.Request = None) -> tuple:
    """The page settled on a fusion strength λ (it already shows the maps for it): bring the
    session — summary, hover values, report, and so the export and the Faithfulness tab — to the
    same λ. No network runs. A commit for another explanation than the session's current one
    (its ``generation`` and ``key`` name the payload the page drew from) changes nothing."""
    skip = tuple(gr.skip() for _ in COMMIT_OUTPUTS)
    data = getattr(event, "_data", None) or {}
    if session is None or not GENERATIONS.is_current(session_key(request), session.generation):
        return skip
    if data.get("generation") != session.generation:
        return skip
    with user_errors("Cannot apply this fusion strength"):
        strength = float(data.get("strength"))
        params = replace(session.params, strength=strength).validated()
        if params == session.params:
            return skip
        evidence, maps, report = compute.refuse(session.request.model, session.evidence, params)
    session = session.with_fusion(evidence, params, maps, report)
    return (session, _summary(session), figures.hover_figure(session.evidence.image, session.maps,
                                                             session.colormap), session.report)


def reveal() -> dict[str, Any]:
    """Show a component hidden until it has something to show (the download box)."""
    return gr.update(visible=True)


def _download(session: Session | None, write: Callable[..., Path]) -> str:
    """The path of a file ``write(explanation, folder, colormap, opacity)`` makes of the session's
    current explanation, in the export folder (files older than an hour are dropped first)."""
    if session is None:
        raise gr.Error("Explain an image first; then the download holds its maps and report.")
    with user_errors("Cannot prepare the download"):
        EXPORT_DIR.mkdir(exist_ok=True)
        for old in EXPORT_DIR.iterdir():
            if time.time() - old.stat().st_mtime > EXPORT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        explanation = session.explanation(MODELS.get(session.request.model))
        return str(write(explanation, EXPORT_DIR, session.colormap, session.opacity))


def export(session: Session | None) -> str:
    """The path of a zip of the current explanation (maps as ``.npy`` and PNG overlays, ``report.json``)."""
    return _download(session, export_zip)


def export_report(session: Session | None) -> str:
    """The path of the one-file HTML report of the current explanation: pictures inline, opens
    offline, prints on A4 landscape — the page's explanation to keep and forward."""
    return _download(session, export_html)


def faithfulness(session: Session | None, steps: float, extra_methods: Sequence[str] | None,
                 request: gr.Request = None, progress: gr.Progress = PROGRESS) -> tuple:
    """Score every map of the session's current explanation (plus ``extra_methods``): the
    :data:`FAITHFULNESS_OUTPUTS` values, a status line, the table and the two curve charts."""
    if session is None:
        raise gr.Error(NOTHING_TO_SCORE, title="Nothing to score yet")
    with user_errors("Cannot score these maps"):
        n_steps = round(steps)
        if not 1 <= n_steps <= compute.MAX_STEPS:
            raise ValueError(f"The number of curve steps must be 1–{compute.MAX_STEPS}, got {steps}.")
        progress(0, desc="Scoring every map…")
        view = compute.faithfulness(session.request.model, session.evidence, session.params, session.maps,
                                    session.report, tuple(extra_methods or ()), n_steps)
    if not GENERATIONS.is_current(session_key(request), session.generation):
        return (text.STALE_SCORES, gr.skip(), gr.skip(), gr.skip())
    return (text.faithfulness_status(session.report, view.probability, n_steps),
            pd.DataFrame(view.rows, columns=HEADERS), view.deletion, view.insertion)
