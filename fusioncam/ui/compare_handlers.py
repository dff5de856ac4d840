"""What the Compare tab's events do: one image, two sides (A, B), each explained by the Explain
tab's own stages (:mod:`fusioncam.ui.compute`), then :func:`fusioncam.compare.compare`.

A side is a :class:`~fusioncam.ui.session.Session` keyed by its :class:`~fusioncam.ui.session.Request`
(image, model, layer, class): a run recomputes only the sides whose request changed, re-fuses the
others when θ, λ or the weight mode changed, and compares again. Both sides' models are held
(:meth:`~fusioncam.ui.catalog.ModelCache.using`) for the whole run, so neither is evicted mid-run.

Both sides explain the same kept copy of the image (at most :data:`~fusioncam.ui.session.KEPT_SIDE`
pixels a side, as the Explain tab keeps), so each side's view is exactly the part of it that its
model sees, and the comparison can place both maps on it. Output order contracts (``compare_tab``
lists its components in the same order): :data:`PAGE_OUTPUTS`, :data:`API_OUTPUTS`, :data:`OPEN_OUTPUTS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from fusioncam.backend import gpu_decorator
from fusioncam.compare import EXPLANATIONS, LABELS, default_classes, format_value, side
from fusioncam.compare import compare as compare_explanations
from fusioncam.explain import Explanation, FusionParams, GradientEvidence, RegionEvidence, gradient_preview
from fusioncam.images import load_image
from fusioncam.live import blank_payload, live_payload
from fusioncam.models import BUNDLED, LoadedModel
from fusioncam.render import difference_legend, difference_overlay

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
from .handlers import PROGRESS, session_key, user_errors
from .previews import preview_file
from .session import KEPT_SIDE, Generations, Request, Session, display_image, file_digest
from .sharing import SHARED, Shared, share_link, sharing_enabled

SIDES = ("a", "b")
SIDE_OUTPUTS = ("summary", "top5", "fusion", "gradcam", "scorecam", "weights", "report")
#: The inputs of every Compare-tab event, in order (``state`` is the tab's ``gr.State``).
INPUTS = ("image", "model-a", "model-b", "class-a", "class-b", "layer-a", "layer-b", "theta", "strength", "weights",
          "state")
#: What a page event updates, in order.
PAGE_OUTPUTS = ("state", "status", *(f"{name}-{s}" for s in SIDES for name in SIDE_OUTPUTS), "difference", "numbers",
                "record", "class-a", "class-b", "layer-a", "layer-b")
#: What ``/compare`` returns to an API caller (besides the state): A's report, B's report, the record.
API_OUTPUTS = ("state", "report-a", "report-b", "record")
#: What opening a shared comparison sets: λ first and the image last (each input that changes fires an
#: event that reads the others: it must find them all set), :data:`PAGE_OUTPUTS` between.
OPEN_OUTPUTS = ("strength", *PAGE_OUTPUTS, "model-a", "model-b", "theta", "weights", "share-url", "share-note", "image")
BASELINE, REGION_METHOD = "mean", "scorecam"   # the Compare tab explains with the Explain tab's defaults
COLORMAP, OPACITY = "jet", 0.5
CLASS_B_DEFAULT = "Automatic: the second most probable class (model B's top prediction if B's model differs)"
TITLE = "Cannot compare"
CARDS = Generations()   # the live cards' generations, one counter per side of each browser session
RUNS = Generations()    # each browser session's newest comparison: an older run stops early


@dataclass(frozen=True)
class Compared:
    """The Compare tab's kept state: the image both sides explained (``original``, at most
    :data:`KEPT_SIDE` px, identified by ``image_digest``), each side's session, and their comparison
    (``difference`` and ``shared`` on the original's grid, the JSON-able ``record``), and the
    classes as chosen (``None``: automatic; a side's request names the class it resolved to)."""

    image_digest: str
    original: Image.Image
    sides: tuple[Session, Session]
    difference: np.ndarray
    shared: np.ndarray
    record: dict[str, float]
    chosen: tuple[int | None, int | None]


@contextmanager
def side_errors(name: str) -> Iterator[None]:
    """Bad input on side ``name`` ("A", "B", or "A and side B" for the one image) as one sentence
    that names the side: ``side B: Unknown class …``."""
    with user_errors(TITLE), side(name):
        yield


@gpu_decorator(duration=30)
def compare_sides(spec_a: str, side_a: tuple[RegionEvidence, FusionParams, dict[str, np.ndarray], dict[str, Any]],
                  spec_b: str, side_b: tuple[RegionEvidence, FusionParams, dict[str, np.ndarray], dict[str, Any]],
                  original: Image.Image) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """:func:`fusioncam.compare.compare` of two kept sides (four scoring forwards): the difference,
    the shared region and the record. Plain data in and out, so it can run in a ZeroGPU worker."""
    exp_a = Explanation(MODELS.get(spec_a), *side_a)
    exp_b = Explanation(MODELS.get(spec_b), *side_b)
    result = compare_explanations(exp_a, exp_b, image=original)
    return result.difference, result.shared, result.record


def _kept(session: Session) -> tuple[RegionEvidence, FusionParams, dict[str, np.ndarray], dict[str, Any]]:
    return session.evidence, session.params, session.maps, session.report


def _class_update(name: str, model: LoadedModel, top5: list[dict], target: int | None) -> dict[str, Any]:
    """Side ``name``'s class dropdown: its model's classes, the top-5 first, and the value shown."""
    choices = class_choices(model.class_names, top5)
    if name == "b":
        choices[0] = (CLASS_B_DEFAULT, TOP_CLASS)
    return gr.update(choices=choices, value=TOP_CLASS if target is None else str(target))


def _side_started(name: str, evidence: GradientEvidence, model: LoadedModel, generation: int, params: FusionParams,
                  target: int | None, layer: str | None) -> dict[str, Any]:
    """Side ``name``'s outputs once its gradient pass is done: Grad-CAM, the dropdowns, blank cards."""
    display = display_image(evidence.image)
    preview = gradient_preview(evidence, params.theta, params.gradient_method)
    return {f"summary-{name}": text.compare_side_progress(name.upper(), evidence, model.class_names),
            f"top5-{name}": text.top5_label(evidence.top_predictions(model.class_names)),
            f"fusion-{name}": blank_payload(generation),
            f"gradcam-{name}": preview_file(figures.overlays(display, preview, COLORMAP, OPACITY, ("gradcam",))[0]),
            f"scorecam-{name}": None, f"weights-{name}": None, f"report-{name}": None,
            f"class-{name}": _class_update(name, model, evidence.top_predictions(model.class_names), target),
            f"layer-{name}": gr.update(choices=layer_choices(model), value=layer or DEFAULT_LAYER)}


def _side_finished(name: str, session: Session, model: LoadedModel, cards: bool = True) -> dict[str, Any]:
    """Side ``name``'s outputs for an explained side (``cards``: also its live card and pictures).
    An anytime (partial) update sends only what changed and costs little: the Score-CAM picture as
    a captioned JPEG preview and the live card's payload; the Grad-CAM picture, the top-5 and the
    β/γ chart wait for the exact explanation."""
    outputs: dict[str, Any] = {f"summary-{name}": text.compare_side_summary(name.upper(), session.report),
                               f"report-{name}": session.report}
    partial = not session.evidence.final
    if partial or cards:
        outputs[f"fusion-{name}"] = live_payload(session.explanation(model), session.generation, session.display,
                                                 COLORMAP, OPACITY)
    if partial:
        [scorecam] = figures.overlays(session.display, session.maps, COLORMAP, OPACITY, ("scorecam",))
        caption = text.progress_caption(session.report["progress"])
        return outputs | {f"scorecam-{name}": preview_file(figures.captioned(scorecam, caption))}
    outputs[f"weights-{name}"] = figures.weights_figure(session.report)
    if cards:
        gradcam, scorecam = figures.overlays(session.display, session.maps, COLORMAP, OPACITY, ("gradcam", "scorecam"))
        outputs |= {f"top5-{name}": text.top5_label(session.report["top5"]), f"gradcam-{name}": gradcam,
                    f"scorecam-{name}": scorecam}
    return outputs


def difference_picture(compared: Compared) -> np.ndarray:
    """The difference drawn on the whole image (parts not compared dimmed), its legend beneath."""
    shown = display_image(compared.original)
    picture = difference_overlay(shown, compared.difference, OPACITY, compared.shared)
    legend = difference_legend(picture.shape[1])
    return np.vstack([picture, legend])


def _comparison(compared: Compared) -> dict[str, Any]:
    """The outputs between the sides: the difference picture, the numbers and the record."""
    record = compared.record
    values = {key: format_value(key, value) for key, value in record.items()}
    table = text.comparison_table(record, LABELS, EXPLANATIONS, values)
    reports = [session.report for session in compared.sides]
    return {"difference": difference_picture(compared), "numbers": table, "record": record,
            "status": text.compare_done(*reports, record["shared_region"])}


def _steps(image: str | None, model_a: str, model_b: str, class_a: str | int | None, class_b: str | int | None,
           layer_a: str | None, layer_b: str | None, theta: float, strength: float, weights: str,
           state: Compared | None, key: str, progress: gr.Progress) -> Iterator[dict[str, Any]]:
    """The comparison as a series of page updates (output name → value); the last one holds the
    new state. Nothing is yielded when nothing changed, nor once a newer run of this session began.
    The run's passes are turns of one scheduler owner, released when the run ends or is left."""
    run = RUNS.begin(key)
    owner = f"{key}/compare#{run}"
    try:
        yield from _run_steps(image, model_a, model_b, class_a, class_b, layer_a, layer_b, theta, strength, weights,
                              state, key, run, owner, progress)
    finally:
        compute.SCHEDULER.done(owner)


def _run_steps(image: str | None, model_a: str, model_b: str, class_a: str | int | None, class_b: str | int | None,
               layer_a: str | None, layer_b: str | None, theta: float, strength: float, weights: str,
               state: Compared | None, key: str, run: int, owner: str,
               progress: gr.Progress) -> Iterator[dict[str, Any]]:
    """:func:`_steps` for run ``run`` of session ``key``, its passes as turns of ``owner``."""
    with user_errors(TITLE):
        if not image:
            raise ValueError(text.COMPARE_NO_IMAGE)
        params = FusionParams(float(theta), float(strength), weights).validated()
    with side_errors("A and side B"):
        digest = file_digest(image)
        original = state.original if state is not None and state.image_digest == digest else \
            display_image(load_image(image), KEPT_SIDE)
    specs = {}
    for name, value in (("a", model_a), ("b", model_b)):
        with side_errors(name.upper()):
            specs[name] = parse_model(value)
    if MODELS.must_wait(*specs.values()):
        yield {"status": text.COMPARE_MODEL_WAIT}
    with MODELS.using(*specs.values()):
        models, chosen, layers = {}, {}, {}
        for name, target, layer in (("a", class_a, layer_a), ("b", class_b, layer_b)):
            with side_errors(name.upper()):
                if specs[name] not in MODELS.loaded():
                    progress(0, desc=f"Loading model {specs[name]}…")
                models[name] = MODELS.get(specs[name])
                chosen[name], layers[name] = parse_target(target, models[name].class_names), parse_layer(layer)
        targets = dict(chosen)
        kept = dict(zip(SIDES, state.sides, strict=True)) if state is not None and state.image_digest == digest else {}
        sessions: dict[str, Session] = {}
        started: dict[str, GradientEvidence] = {}
        for name in SIDES:
            if name == "b" and targets["b"] is None and specs["a"] == specs["b"]:
                logits_a = (started["a"] if "a" in started else sessions["a"].evidence).logits
                class_a_index = (started["a"] if "a" in started else sessions["a"].evidence).target
                targets["b"] = default_classes(models["a"], models["b"], logits_a, class_a=class_a_index)[1]
            wanted = Request(digest, specs[name], layers[name], targets[name], BASELINE, REGION_METHOD, None)
            if name in kept and kept[name].request == wanted:
                sessions[name] = kept[name]
                continue
            with side_errors(name.upper()):
                progress(0.02, desc=f"Side {name.upper()}: Grad-CAM, one pass through the network…")
                started[name] = compute.gather_gradients(specs[name], original, targets[name], layers[name], BASELINE,
                                                         owner=owner)
        if not started and all(sessions[n].params == params for n in SIDES) and state is not None:
            return   # nothing changed: the page already shows this comparison
        if not RUNS.is_current(key, run):
            return
        generations = {name: CARDS.begin(f"{key}/{name}") for name in started}
        update: dict[str, Any] = {}
        if started:
            update = {"status": text.compare_status([name.upper() for name in started]), "difference": None,
                      "numbers": "", "record": None}
        for name, evidence in started.items():
            update |= _side_started(name, evidence, models[name], generations[name], params, chosen[name],
                                    layers[name])
        if update:
            yield update
        for name in SIDES:
            if name in started:
                wanted = Request(digest, specs[name], layers[name], targets[name], BASELINE, REGION_METHOD, None)
                display = display_image(started[name].image)
                with side_errors(name.upper()):   # anytime: partial maps as Score-CAM goes, the exact ones last
                    for regions, maps, report in compute.stream_regions(specs[name], started[name], REGION_METHOD,
                                                                        None, params, owner=owner):
                        sessions[name] = Session(request=wanted, generation=generations[name], evidence=regions,
                                                 params=params, maps=maps, report=report, display=display,
                                                 colormap=COLORMAP, opacity=OPACITY)
                        if not RUNS.is_current(key, run):
                            return
                        yield _side_finished(name, sessions[name], models[name])
            elif sessions[name].params != params:
                fuse_inputs_changed = replace(sessions[name].params, strength=params.strength) != params
                with side_errors(name.upper()):
                    evidence, maps, report = compute.refuse(specs[name], sessions[name].evidence, params)
                sessions[name] = sessions[name].with_fusion(evidence, params, maps, report)
                update = _side_finished(name, sessions[name], models[name], cards=fuse_inputs_changed)
                if RUNS.is_current(key, run):
                    yield update
        with user_errors(TITLE):
            progress(0.98, desc="Comparing the two maps…")
            difference, shared, record = compare_sides(specs["a"], _kept(sessions["a"]), specs["b"],
                                                       _kept(sessions["b"]), original)
    compared = Compared(digest, original, (sessions["a"], sessions["b"]), difference, shared, record,
                        (chosen["a"], chosen["b"]))
    if RUNS.is_current(key, run):
        yield {"state": compared, **_comparison(compared)}


def _page(steps: Iterator[dict[str, Any]]) -> Iterator[tuple]:
    """Page updates as :data:`PAGE_OUTPUTS` tuples (what an update does not name is left as it is);
    at least one, which changes nothing when there was nothing to update."""
    updated = False
    for update in steps:
        updated = True
        yield tuple(update.get(name, gr.skip()) for name in PAGE_OUTPUTS)
    if not updated:
        yield tuple(gr.skip() for _ in PAGE_OUTPUTS)


def _changed_model(reset: str):
    """A page handler for a new model on side ``reset``: that side's class and layer go back to
    their defaults (the old ones may not exist on the new model)."""

    def handler(image: str | None, model_a: str, model_b: str, class_a: str | int | None, class_b: str | int | None,
                layer_a: str | None, layer_b: str | None, theta: float, strength: float, weights: str,
                state: Compared | None, request: gr.Request = None,
                progress: gr.Progress = PROGRESS) -> Iterator[tuple]:
        if not image:
            yield from _page(iter(()))
            return
        if reset == "a":
            class_a, layer_a = TOP_CLASS, DEFAULT_LAYER
        else:
            class_b, layer_b = TOP_CLASS, DEFAULT_LAYER
        yield from _page(_steps(image, model_a, model_b, class_a, class_b, layer_a, layer_b, theta, strength, weights,
                                state, session_key(request), progress))

    return handler


#: Side A's model changed: A's class and layer reset (B's automatic class follows).
compare_new_model_a = _changed_model("a")
#: Side B's model changed: B's class and layer reset (B's automatic class becomes B's top-1).
compare_new_model_b = _changed_model("b")


def compare_page(image: str | None, model_a: str, model_b: str, class_a: str | int | None, class_b: str | int | None,
                 layer_a: str | None, layer_b: str | None, theta: float, strength: float, weights: str,
                 state: Compared | None, request: gr.Request = None, progress: gr.Progress = PROGRESS
                 ) -> Iterator[tuple]:
    """The Compare button: compare (recomputing only the sides that changed), the page updated as
    each stage lands."""
    yield from _page(_steps(image, model_a, model_b, class_a, class_b, layer_a, layer_b, theta, strength, weights,
                            state, session_key(request), progress))


def compare_changed(image: str | None, model_a: str, model_b: str, class_a: str | int | None,
                    class_b: str | int | None, layer_a: str | None, layer_b: str | None, theta: float,
                    strength: float, weights: str, state: Compared | None, request: gr.Request = None,
                    progress: gr.Progress = PROGRESS) -> Iterator[tuple]:
    """A new image, class, layer, θ, weight mode or settled λ: compare again; with no image, nothing."""
    if not image:
        yield from _page(iter(()))
        return
    yield from compare_page(image, model_a, model_b, class_a, class_b, layer_a, layer_b, theta, strength, weights,
                            state, request, progress)


def compare(image: str | None, model_a: str = BUNDLED, model_b: str = BUNDLED, class_a: str | int | None = TOP_CLASS,
            class_b: str | int | None = TOP_CLASS, layer_a: str | None = DEFAULT_LAYER,
            layer_b: str | None = DEFAULT_LAYER, theta: float = 10, strength: float = 1.0, weights: str = "reference",
            state: Compared | None = None, request: gr.Request = None,
            progress: gr.Progress = PROGRESS) -> tuple[Compared, dict[str, Any], dict[str, Any], dict[str, float]]:
    """``/compare``: both sides explained and compared; :data:`API_OUTPUTS` (A's report, B's report
    and the record with the keys of ``compare.json``). Classes, layers and models as on the page
    (``class_b`` ``"top"``: B's automatic class)."""
    compared = state
    for update in _steps(image, model_a, model_b, class_a, class_b, layer_a, layer_b, theta, strength, weights, state,
                         session_key(request), progress):
        compared = update.get("state", compared)
    if compared is None:
        raise gr.Error("A newer comparison of this session replaced this one; ask again.", title=TITLE)
    return compared, compared.sides[0].report, compared.sides[1].report, compared.record


def share_comparison(state: Compared | None, request: gr.Request = None) -> tuple[str, str]:
    """The link to the tab's comparison, and the note on who sees it until when."""
    if not sharing_enabled():
        raise gr.Error(text.SHARE_OFF, title="Cannot share")
    if state is None:
        raise gr.Error("Compare an image first; then a link can reopen both sides.", title="Nothing to share yet")
    with user_errors("Cannot share"):
        url, entry = share_link("compare", state, request)
    return url, text.share_note(entry.expires, SHARED.capacity)


def reopen(entry: Shared, request: gr.Request | None, picture_path: str) -> tuple:
    """The :data:`OPEN_OUTPUTS` values for a shared comparison, now the visitor's own (their live
    cards under new generations; ``picture_path``: the kept image as a file, whose digest names it)."""
    kept: Compared = entry.value
    key = session_key(request)
    digest = file_digest(picture_path)
    sides = []
    for name, session in zip(SIDES, kept.sides, strict=True):
        sides.append(replace(session, generation=CARDS.begin(f"{key}/{name}"),
                             request=replace(session.request, image_digest=digest)))
    compared = replace(kept, image_digest=digest, sides=(sides[0], sides[1]))
    update: dict[str, Any] = {"state": compared, **_comparison(compared)}
    for name, session, target in zip(SIDES, compared.sides, compared.chosen, strict=True):
        model = MODELS.get(session.request.model)
        update |= _side_finished(name, session, model)
        update[f"class-{name}"] = _class_update(name, model, session.report["top5"], target)
        update[f"layer-{name}"] = gr.update(choices=layer_choices(model), value=session.request.layer or DEFAULT_LAYER)
    params = compared.sides[0].params
    inputs = {"image": picture_path, "model-a": compared.sides[0].request.model,
              "model-b": compared.sides[1].request.model, "theta": params.theta, "strength": params.strength,
              "weights": params.weights, "share-url": gr.skip(), "share-note": text.opened_note(entry.expires)}
    return tuple(inputs[name] if name in inputs else update.get(name, gr.skip()) for name in OPEN_OUTPUTS)

