"""The trust checks' events: the "Sanity check" tab, and ROAD with the protocol card on the
"Faithfulness" tab. UI values in, UI values out; the network work is in the two GPU functions.

Output order contracts (``sanity_tab.py`` and ``app.py`` list their components in this order):
:data:`SANITY_OUTPUTS` for :func:`sanity`, :data:`ROAD_OUTPUTS` for :func:`road_and_card`.
Every failure reaches the page as one plain sentence (:func:`~fusioncam.ui.handlers.user_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fusioncam.backend import gpu_decorator
from fusioncam.explain import Explanation, FusionParams, RegionEvidence
from fusioncam.methods import METHOD_NAMES
from fusioncam.metrics import DEFAULT_STEPS, ROAD_NOISE, protocol_card
from fusioncam.models import BUNDLED
from fusioncam.sanity import PASS_BELOW, REGION_METHODS, SanityResult, cost_text, sanity_check
from fusioncam.sanity_figure import strip

from .catalog import MODELS
from .faithfulness import PALETTE, ROAD_HEADERS, RoadView, explanation_card, road_explanation
from .handlers import GENERATIONS, PROGRESS, session_key, user_errors
from .session import Session

SANITY_OUTPUTS = ("sanity-status", "sanity-curves", "sanity-strip")
ROAD_OUTPUTS = ("road-table", "faithfulness-protocol")
NOTHING_TO_CHECK = "Explain an image first (on the Explain tab); then its maps can be checked here."
NO_METHOD = "Pick at least one map to check."
STALE_CHECK = ("A new explanation started while this check ran, so its result was not shown; press the button "
               "again to check the new maps.")
DEFAULT_CARD = ("Protocol of the scores below (shown for the default settings until you score: the masking "
                "baseline is then the explanation's own).\n\n" + protocol_card(road_noise=None))
BUNDLED_STEPS = {BUNDLED: 12}   # randomisation steps of the bundled model, for the cost said before a check


@gpu_decorator(duration=240)
def compute_sanity(spec: str, evidence: RegionEvidence, params: FusionParams, methods: tuple[str, ...],
                   mode: str) -> SanityResult:
    """The sanity check of the session's image, class, layer and baseline on a copy of its model."""
    progress = gr.Progress()
    return sanity_check(MODELS.get(spec), evidence.image, target=evidence.target, layer=evidence.layer,
                        methods=methods, mode=mode, baseline=evidence.baseline_kind, params=params,
                        progress=lambda fraction, text: progress(fraction, desc=f"Sanity check: {text}"))


@gpu_decorator(duration=120)
def compute_road(spec: str, evidence: RegionEvidence, params: FusionParams, maps: dict[str, np.ndarray],
                 report: dict[str, Any], extra_methods: tuple[str, ...]) -> RoadView:
    """ROAD of every map of the session's explanation (and ``extra_methods``)."""
    progress = gr.Progress()
    explanation = Explanation(MODELS.get(spec), evidence, params, maps, report)
    return road_explanation(explanation, extra_methods,
                            lambda fraction, text: progress(fraction, desc=f"Faithfulness: {text}"))


def method_label(name: str) -> str:
    return METHOD_NAMES.get(name, name)


def sanity_cost(session: Session | None, methods: Sequence[str] | None) -> str:
    """The status line before a check: what it will cost (with this explanation's Score-CAM time)."""
    chosen = list(methods or [])
    if session is None:
        return "Explain an image on the Explain tab, then press the button. " + cost_text(
            BUNDLED_STEPS[BUNDLED], chosen)
    steps = BUNDLED_STEPS.get(session.request.model)
    seconds = session.evidence.timings.get("scorecam_s")
    return "Ready to check the maps of this explanation: " + cost_text(steps, chosen, seconds)


def sanity_verdicts(result: SanityResult, class_name: str) -> str:
    """Plain words: which maps passed (their similarity fell) and which did not."""
    where = "after every weight was randomised" if result.mode == "cascading" else "on average over the steps"
    lines = [f"**Sanity check** of **{class_name}** (class {result.target}) at layer `{result.layer}`: {result.mode} "
             f"randomisation in {len(result.steps)} steps ({result.steps[0]} first), {result.seconds:.1f} s."]
    for name in result.original:
        label, step, rho = method_label(name), result.judged_step(name), result.judged_rho(name) or 0.0
        blank_after = step < len(result.steps)
        at = where if not blank_after else f"at step {step}, the last at which it showed anything"
        if blank_after and step == 0:
            lines.append(f"- ✅ **{label} passed**: its map went blank as soon as the head was randomised.")
        elif result.passed(name):
            lines.append(f"- ✅ **{label} passed**: its map changed with the weights (Spearman correlation with "
                         f"the original {rho:+.2f} {at}).")
        else:
            lines.append(f"- ❌ **{label} did not pass**: its map stayed close to the original (Spearman "
                         f"{rho:+.2f} {at}), so it shows the image more than what this model learnt.")
        if blank_after and step:
            lines.append(f"  From step {step + 1} on its map is blank (constant), which this check cannot read "
                         "either way: typically the randomised model no longer responds to the image.")
    lines.append(f"A map passes when its Spearman correlation falls below {PASS_BELOW:g}. This is one image and "
                 "one seed: the correlation left after randomisation scatters from image to image, so judge a "
                 "method over several images (`python -m fusioncam sanity`).")
    return "\n".join(lines)


def sanity_curves(result: SanityResult) -> go.Figure:
    """Spearman and SSIM against the step (0 = the intact model), one line per method."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Spearman rank correlation", "SSIM"))
    steps = ["intact", *(f"{i}: {name}" for i, name in enumerate(result.steps, start=1))]
    for index, name in enumerate(result.original):
        colour = PALETTE[index % len(PALETTE)]
        for column, values in ((1, result.spearman[name]), (2, result.ssim[name])):
            figure.add_scatter(x=steps, y=[1.0, *values], mode="lines+markers", name=method_label(name),
                               legendgroup=name, showlegend=column == 1, line={"color": colour},
                               hovertemplate=f"{method_label(name)}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
                               row=1, col=column)
    figure.add_hline(y=PASS_BELOW, line_dash="dot", line_color="grey", row=1, col=1,
                     annotation_text="pass below", annotation_position="bottom left")
    figure.update_yaxes(range=[-1.05, 1.05])
    figure.update_xaxes(tickangle=-45)
    figure.update_layout(height=420, margin={"l": 50, "r": 10, "t": 40, "b": 90}, template="plotly_white",
                         legend={"orientation": "h", "y": 1.15})
    return figure


def sanity(session: Session | None, methods: Sequence[str] | None, mode: str, request: gr.Request = None,
           progress: gr.Progress = PROGRESS) -> tuple:
    """Run the sanity check on the session's explanation: the :data:`SANITY_OUTPUTS` values."""
    if session is None:
        raise gr.Error(NOTHING_TO_CHECK, title="Nothing to check yet")
    with user_errors("Cannot run the sanity check"):
        chosen = tuple(methods or ())
        if not chosen:
            raise ValueError(NO_METHOD)
        slow = [method_label(m) for m in chosen if m in REGION_METHODS]
        progress(0, desc="Sanity check: " + ("reruns Score-CAM at every step…" if slow else "starting…"))
        result = compute_sanity(session.request.model, session.evidence, session.params, chosen, mode)
        if not GENERATIONS.is_current(session_key(request), session.generation):
            return (STALE_CHECK, gr.skip(), gr.skip())
        return (sanity_verdicts(result, session.report["class_name"]), sanity_curves(result),
                strip(result, session.colormap, tile=72))


def card(session: Session | None, steps: float, include_road: bool) -> str:
    """The protocol card for the session's explanation (the default settings before any)."""
    if session is None:
        return DEFAULT_CARD
    with user_errors("Cannot describe the protocol"):
        explanation = session.explanation(MODELS.get(session.request.model))
        return explanation_card(explanation, round(steps or DEFAULT_STEPS), bool(include_road))


def road_and_card(session: Session | None, steps: float, extra_methods: Sequence[str] | None, include_road: bool,
                  request: gr.Request = None, progress: gr.Progress = PROGRESS) -> tuple:
    """After the faithfulness table: ROAD of every map when asked for, and the protocol card —
    the :data:`ROAD_OUTPUTS` values."""
    if session is None:
        return gr.update(visible=False), DEFAULT_CARD
    protocol = card(session, steps, include_road)
    if not include_road:
        return gr.update(visible=False), protocol
    with user_errors("Cannot compute ROAD"):
        progress(0, desc=f"ROAD: noisy linear imputation (σ = {ROAD_NOISE:g}) of every map…")
        view = compute_road(session.request.model, session.evidence, session.params, session.maps, session.report,
                            tuple(extra_methods or ()))
    if not GENERATIONS.is_current(session_key(request), session.generation):
        return gr.skip(), gr.skip()
    return gr.update(value=pd.DataFrame(view.rows, columns=ROAD_HEADERS), visible=True), protocol
