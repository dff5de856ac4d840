"""The "Compare" tab: one image, two sides (A, B), the difference between their Fusion-CAM maps and
the numbers to quote. Layout and event wiring only; what the events do is in
:mod:`fusioncam.ui.compare_handlers`. Every component's ``elem_id`` is ``compare-KEY`` for its key
in the dict :func:`compare_tab` returns (the share controls: ``compare-share``, ``compare-share-url``).
"""

from __future__ import annotations

import gradio as gr

from fusioncam.fusion import WEIGHT_MODES
from fusioncam.models import BUNDLED

from . import compare_handlers, text
from .catalog import DEFAULT_LAYER, MODELS, TOP_CLASS, any_model_allowed, model_choices
from .inputs import undecoded_upload
from .live import live_map
from .share_handlers import share_controls

#: The Compare tab's λ slider drives both live cards (one λ for both sides: a fair comparison);
#: the colour map and opacity are the payload's own (no such controls on this tab).
CARD_CONTROLS = {"strength": "compare-strength", "colormap": "compare-colormap", "opacity": "compare-opacity"}
SMALL = 170   # px: the height of each side's Grad-CAM and Score-CAM pictures


def compare_tab(examples: list[str], state_ttl_s: int) -> dict[str, gr.components.Component]:
    """The tab's components by key; its state lives ``state_ttl_s`` seconds after its last change."""
    ui: dict[str, gr.components.Component] = {"state": gr.State(None, time_to_live=state_ttl_s)}
    gr.Markdown(text.COMPARE_INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=280):
            ui["image"] = undecoded_upload(gr.Image(label="Your image (both sides explain it)", type="filepath",
                                                    sources=["upload", "clipboard"], elem_id="compare-image",
                                                    height=220))
            gr.Examples(examples, inputs=ui["image"], label="Examples (click one)")
        with gr.Column(scale=4, min_width=280):
            ui["run"] = gr.Button("Compare", variant="primary", elem_id="compare-run")
            ui["strength"] = gr.Slider(0, 5, value=1, step=0.1, label="Fusion strength λ (both sides)",
                                       info="One λ for both sides; the maps follow it at once.",
                                       elem_id="compare-strength")
            ui["theta"] = gr.Slider(0, 50, value=10, step=1, label="Denoising θ (percentile, both sides)",
                                    elem_id="compare-theta")
            ui["weights"] = gr.Radio(list(WEIGHT_MODES), value="reference", label="Weight mode (both sides)",
                                     elem_id="compare-weights")
        with gr.Column(scale=4, min_width=280):
            ui["status"] = gr.Markdown(text.COMPARE_WAITING, elem_id="compare-status")
            shared = share_controls("compare-share", "comparison")
            ui.update({key.removeprefix("compare-"): component for key, component in shared.items()})
    with gr.Row(equal_height=False):
        _side(ui, "a")
        with gr.Column(scale=4, min_width=300):
            ui["difference"] = gr.Image(label="Difference N(F_A) − N(F_B): red where A looks more, blue where B does",
                                        format="png", interactive=False, buttons=["download", "fullscreen"],
                                        elem_id="compare-difference")
            ui["numbers"] = gr.Markdown("", elem_id="compare-numbers")
        _side(ui, "b")
    with gr.Accordion("Reports (JSON): side A, side B, the comparison", open=False), gr.Row(equal_height=False):
        for key in ("report-a", "report-b", "record"):
            ui[key] = gr.JSON(label={"report-a": "Side A", "report-b": "Side B", "record": "Comparison"}[key],
                              elem_id=f"compare-{key}")
    ui["api"] = gr.Button("Compare (API)", visible=False, elem_id="compare-api")
    return ui


def _side(ui: dict[str, gr.components.Component], name: str) -> None:
    """One side's column: its model, class and layer, then its maps and read-outs."""
    side = name.upper()
    default_class = "Top prediction (automatic)" if name == "a" else compare_handlers.CLASS_B_DEFAULT
    with gr.Column(scale=4, min_width=300):
        gr.Markdown(f"### Side {side}")
        ui[f"model-{name}"] = gr.Dropdown(model_choices(), value=BUNDLED, label=f"Model {side}",
                                          allow_custom_value=any_model_allowed(), elem_id=f"compare-model-{name}")
        ui[f"class-{name}"] = gr.Dropdown([(default_class, TOP_CLASS)], value=TOP_CLASS, label=f"Class {side}",
                                          allow_custom_value=True, elem_id=f"compare-class-{name}")
        ui[f"layer-{name}"] = gr.Dropdown([(f"Model default ({MODELS.get(BUNDLED).default_layer})", DEFAULT_LAYER)],
                                          value=DEFAULT_LAYER, label=f"Layer {side}", allow_custom_value=True,
                                          elem_id=f"compare-layer-{name}")
        ui[f"summary-{name}"] = gr.Markdown("", elem_id=f"compare-summary-{name}")
        ui[f"fusion-{name}"] = live_map("fusion", f"Fusion-CAM, side {side}", elem_id=f"compare-fusion-{name}",
                                        controls=CARD_CONTROLS)
        with gr.Row(equal_height=False):
            for kind, caption in (("gradcam", "Grad-CAM"), ("scorecam", "Score-CAM")):
                ui[f"{kind}-{name}"] = gr.Image(label=f"{caption}, side {side}", format="png", interactive=False,
                                                height=SMALL, buttons=["fullscreen"], elem_id=f"compare-{kind}-{name}")
        ui[f"top5-{name}"] = gr.Label(num_top_classes=5, label=f"Top-5, model {side}", elem_id=f"compare-top5-{name}")
        ui[f"weights-{name}"] = gr.Plot(label=f"β, γ of side {side}", elem_id=f"compare-weights-{name}")


def wire_compare_tab(ui: dict[str, gr.components.Component], concurrency_limit: int = 2) -> None:
    """Heavy events run among the Explain tab's (``concurrency_id`` "explain", at most
    ``concurrency_limit`` at once: pass the Explain tab's, as Gradio keeps the lowest limit given
    for an id); each keeps only its newest trigger."""
    inputs = [ui[name] for name in compare_handlers.INPUTS]
    heavy = {"inputs": inputs, "outputs": [ui[name] for name in compare_handlers.PAGE_OUTPUTS],
             "concurrency_id": "explain", "concurrency_limit": concurrency_limit, "trigger_mode": "always_last",
             "api_visibility": "private", "show_progress_on": [ui["scorecam-a"], ui["scorecam-b"], ui["difference"]]}
    ui["run"].click(compare_handlers.compare_page, **heavy)
    # λ: the cards follow the slider in the page; card A's commit tells the server once it settles.
    gr.on([ui["image"].change, ui["class-a"].input, ui["class-b"].input, ui["layer-a"].input, ui["layer-b"].input,
           ui["theta"].change, ui["weights"].change], compare_handlers.compare_changed, **heavy)
    ui["fusion-a"].commit(compare_handlers.compare_changed, **heavy)
    ui["model-a"].input(compare_handlers.compare_new_model_a, **heavy)
    ui["model-b"].input(compare_handlers.compare_new_model_b, **heavy)
    ui["api"].click(compare_handlers.compare, inputs, [ui[name] for name in compare_handlers.API_OUTPUTS],
                    api_name="compare", concurrency_id="explain", concurrency_limit=concurrency_limit)
    ui["share"].click(compare_handlers.share_comparison, ui["state"], [ui["share-url"], ui["share-note"]],
                      api_name="compare_share", concurrency_id="share", concurrency_limit=8)
