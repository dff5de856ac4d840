"""The Fusion-CAM explorer: a Gradio page to upload, explain, compare and tune Fusion-CAM live.

Layout and event wiring only; what each event does is in ``fusioncam/ui/handlers.py``.
Run ``python app.py`` (offline, on the bundled EfficientNet-Lite0); Hugging Face Spaces runs it too.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from fusioncam.allocator import tune_host_allocator
from fusioncam.baselines import BASELINES
from fusioncam.explain import DEFAULT_TOP_K, MAP_NAMES, REGION_METHODS
from fusioncam.fusion import WEIGHT_MODES
from fusioncam.gradient import GRADIENT_METHODS
from fusioncam.metrics import DEFAULT_STEPS
from fusioncam.models import BUNDLED
from fusioncam.ui import handlers, share_handlers, text, trust
from fusioncam.ui.catalog import DEFAULT_LAYER, MODELS, TOP_CLASS, any_model_allowed, model_choices
from fusioncam.ui.compare_tab import compare_tab, wire_compare_tab
from fusioncam.ui.compute import MAX_STEPS
from fusioncam.ui.faithfulness import HEADERS as FAITHFULNESS_HEADERS
from fusioncam.ui.faithfulness import ROAD_HEADERS
from fusioncam.ui.inputs import undecoded_upload
from fusioncam.ui.live import COLORMAP_CHOICES, MAP_GRID_CSS, live_map
from fusioncam.ui.sanity_tab import sanity_tab
from fusioncam.ui.warmup import warm_up_in_background

ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLES = sorted(str(path) for path in ASSETS.glob("*.jpg"))
CSS = """
#map-fusion { border: 2px solid var(--color-accent); }
#explain-state { font-size: var(--text-xs); color: var(--body-text-color-subdued); min-height: 0; }
""" + MAP_GRID_CSS
STATE_ELEMENT = {"fusion": "explain-state"}   # the live card that reports the explanation's state
# Explanations running at once: their passes take turns on the network (fusioncam.scheduler: Grad-CAM first,
# Score-CAM chunks round robin), so more of them in flight share the machine fairly instead of queueing.
EXPLAIN_CONCURRENCY = 8
QUEUE_SIZE = 32             # waiting requests beyond this are refused: the page says the app is busy
SESSION_TTL_S = 3600        # a session's evidence is dropped an hour after its last change
# Passed to ``launch`` (here and by the tests): uploads over 25 MB are refused before any handler runs, and
# at most 256 sessions are kept in memory (the oldest dropped first; each keeps at most a few MB).
LAUNCH_OPTIONS = {"max_file_size": "25mb", "state_session_capacity": 256, "show_error": True}


def explain_tab(session: gr.State) -> dict[str, gr.components.Component]:
    """The "Explain" tab: inputs on the left, the six maps and their read-outs on the right."""
    ui: dict[str, gr.components.Component] = {"session": session}
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300):
            ui["image"] = undecoded_upload(gr.Image(label="Your image", type="filepath",
                                                    sources=["upload", "clipboard", "webcam"],
                                                    elem_id="input-image", height=280))
            gr.Examples(EXAMPLES, inputs=ui["image"], label="Examples (click one)")
            ui["run"] = gr.Button("Explain", variant="primary", elem_id="run")
            ui["model"] = gr.Dropdown(model_choices(), value=BUNDLED, label="Model",
                                      allow_custom_value=any_model_allowed(), info=text.model_info(any_model_allowed()),
                                      elem_id="model")
            ui["target-class"] = gr.Dropdown([("Top prediction (automatic)", TOP_CLASS)], value=TOP_CLASS,
                                             label="Explain which class", allow_custom_value=True,
                                             info="The top-5 predictions first, then every class (type to search).",
                                             elem_id="target-class")
            ui["theta"] = gr.Slider(0, 50, value=10, step=1, label="Denoising θ (percentile)",
                                    info="Removes the weakest θ % of the Grad-CAM map.", elem_id="theta")
            ui["strength"] = gr.Slider(0, 5, value=1, step=0.1, label="Fusion strength λ",
                                       info="0 keeps the larger of the two maps; higher averages where they "
                                            "disagree.", elem_id="strength")
            ui["weights"] = gr.Radio(list(WEIGHT_MODES), value="reference", label="Weight mode",
                                     info="reference: the paper's code · raw: the first author's package.",
                                     elem_id="weights")
            with gr.Accordion("Advanced", open=False):
                ui["layer"] = gr.Dropdown([(f"Model default ({MODELS.get(BUNDLED).default_layer})", DEFAULT_LAYER)],
                                          value=DEFAULT_LAYER, label="Target layer", allow_custom_value=True,
                                          elem_id="layer")
                ui["baseline"] = gr.Radio(list(BASELINES), value="mean", label="Masking baseline",
                                          info="What the hidden parts of the image are replaced with.",
                                          elem_id="baseline")
                ui["gradient-method"] = gr.Dropdown(list(GRADIENT_METHODS), value="gradcam", label="Gradient method",
                                                    elem_id="gradient-method")
                ui["region-method"] = gr.Radio(list(REGION_METHODS), value="scorecam", label="Region method",
                                               info="scorecam is exact; scorecam-topk scores only the top-k "
                                                    "channels (faster, approximate).", elem_id="region-method")
                ui["top-k"] = gr.Slider(16, 512, value=DEFAULT_TOP_K, step=16, label="Top-k channels",
                                        elem_id="top-k")
                ui["colormap"] = gr.Dropdown(COLORMAP_CHOICES, value="jet", label="Colour map", elem_id="colormap")
                ui["opacity"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
        with gr.Column(scale=8):
            ui["summary"] = gr.Markdown(text.WAITING, elem_id="summary")
            # "partial" while the maps on show are anytime updates, "done" once they are the exact
            # explanation, empty otherwise: written by the fused map's card as it draws (live.js).
            gr.HTML("", elem_id="explain-state", elem_classes=["fc-state"], padding=False)
            for row in (MAP_NAMES[:3], MAP_NAMES[3:]):
                with gr.Row(equal_height=False):   # each card as tall as its picture (MAP_GRID_CSS)
                    for name in row:
                        ui[f"map-{name}"] = (live_map(name, text.MAP_CAPTIONS[name], STATE_ELEMENT.get(name))
                                             if name in handlers.LIVE_MAPS else
                                             gr.Image(label=text.MAP_CAPTIONS[name], format="png", interactive=False,
                                                      buttons=["download", "fullscreen"], elem_id=f"map-{name}"))
            with gr.Row(equal_height=False):
                ui["top5"] = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="top5")
                ui["weights-plot"] = gr.Plot(label="Contribution weights (β, γ)", elem_id="weights-plot")
            with gr.Accordion("How to read this", open=True):
                gr.Markdown(text.HOW_TO_READ)
                gr.Markdown(text.HOW_TO_READ_AGREEMENT)
            ui["hover"] = gr.Plot(label="Hover over the image (as the model sees it): every map's value there",
                                  elem_id="hover")
            ui["export"] = gr.Button("Prepare a download: every map (.npy), the overlays (.png) and the report",
                                     elem_id="export")
            ui["export-html"] = gr.Button("Prepare a report to keep: one HTML file (opens offline, prints on A4)",
                                          elem_id="export-html")
            ui["download"] = gr.File(label="Download (.zip)", elem_id="download", interactive=False, visible=False)
            ui.update(share_handlers.share_controls("share"))
            with gr.Accordion("Report (JSON)", open=False):
                ui["report"] = gr.JSON(label="Report", elem_id="report")
    return ui


def wire_explain_tab(ui: dict[str, gr.components.Component]) -> None:
    """Heavy events recompute (few at a time); slider, weight-mode and style moves only re-fuse."""
    explain_inputs = [ui[name] for name in ("image", "model", "target-class", "layer", "theta", "strength", "weights",
                                            "baseline", "gradient-method", "region-method", "top-k", "colormap",
                                            "opacity", "session")]
    names = {"weights": "weights-plot"}
    explain_outputs = [ui[names.get(name, name)] for name in handlers.EXPLAIN_OUTPUTS]
    refine_inputs = [ui[name] for name in ("session", "theta", "strength", "weights", "gradient-method", "colormap",
                                           "opacity")]
    refine_outputs = [ui[names.get(name, name)] for name in handlers.REFINE_OUTPUTS]
    heavy = {"inputs": explain_inputs, "outputs": explain_outputs, "concurrency_id": "explain",
             "concurrency_limit": EXPLAIN_CONCURRENCY, "trigger_mode": "always_last",
             # minimal: a small timer on the cards, never an overlay hiding the anytime maps they draw
             "show_progress": "minimal", "show_progress_on": [ui[f"map-{name}"] for name in MAP_NAMES[2:]]}
    events = [
        ui["run"].click(handlers.explain, api_name="explain", **heavy),
        gr.on([ui["target-class"].input, ui["layer"].input, ui["baseline"].input, ui["region-method"].input,
               ui["top-k"].change], handlers.explain_changed_option, api_visibility="private", **heavy),
        ui["image"].change(handlers.explain_new_image, api_visibility="private", **heavy),
        ui["model"].input(handlers.explain_new_model, api_visibility="private", **heavy),
    ]
    for event in events:   # a slider moved while Score-CAM ran is applied once it is done
        event.then(handlers.refine, refine_inputs, refine_outputs, api_visibility="private", show_progress="hidden")
    # λ is not among the triggers: the page fuses and draws for λ itself, and tells the server once
    # the slider settles (the fused card's ``commit`` event); /refuse still takes λ for API callers.
    gr.on([ui[name].change for name in ("theta", "weights", "gradient-method", "colormap", "opacity")],
          handlers.refine, refine_inputs, refine_outputs, api_name="refuse", concurrency_id="refine",
          concurrency_limit=8, trigger_mode="always_last", show_progress="hidden")
    ui["map-fusion"].commit(handlers.commit_strength, ui["session"], [ui[name] for name in handlers.COMMIT_OUTPUTS],
                            api_visibility="private", concurrency_id="refine", trigger_mode="always_last",
                            show_progress="hidden")
    ui["export"].click(handlers.reveal, None, ui["download"], api_visibility="private", queue=False)
    ui["export"].click(handlers.export, ui["session"], ui["download"], api_name="export")
    ui["export-html"].click(handlers.reveal, None, ui["download"], api_visibility="private", queue=False)
    ui["export-html"].click(handlers.export_report, ui["session"], ui["download"], api_name="report")


def faithfulness_tab(session: gr.State) -> None:
    """The "Faithfulness" tab: on request, score every map of the current explanation."""
    gr.Markdown(text.FAITHFULNESS_INTRO)
    with gr.Row(equal_height=False):
        steps = gr.Slider(8, MAX_STEPS, value=DEFAULT_STEPS, step=8, label="Curve steps",
                          info="More steps draw finer curves; each step costs two network passes per map.",
                          elem_id="faithfulness-steps")
        extra = gr.CheckboxGroup([method for method in GRADIENT_METHODS if method != "gradcam"], value=[],
                                 label="Also score these gradient methods", elem_id="faithfulness-extra")
        road = gr.Checkbox(False, label="Also run ROAD", elem_id="faithfulness-road",
                           info="Removes pixels without a constant fill (noisy linear imputation): 18 sparse "
                                "solves and passes per map, a few seconds per map on a CPU.")
    run = gr.Button("Score every map", variant="primary", elem_id="faithfulness-run")
    status = gr.Markdown("Explain an image on the Explain tab, then press the button.", elem_id="faithfulness-status")
    with gr.Row(equal_height=False):
        table = gr.Dataframe(headers=list(FAITHFULNESS_HEADERS), interactive=False, label="Faithfulness of each map",
                             elem_id="faithfulness-table", scale=3)
        card = gr.Markdown(trust.DEFAULT_CARD, elem_id="faithfulness-protocol")
    road_table = gr.Dataframe(headers=ROAD_HEADERS, interactive=False, label="ROAD of each map", visible=False,
                              elem_id="road-table")
    with gr.Row(equal_height=True):
        deletion = gr.Plot(label="Deletion curves", elem_id="deletion-curves")
        insertion = gr.Plot(label="Insertion curves", elem_id="insertion-curves")
    run.click(handlers.faithfulness, [session, steps, extra], [status, table, deletion, insertion],
              api_name="faithfulness", concurrency_id="score", concurrency_limit=2,
              show_progress_on=[table]).success(trust.road_and_card, [session, steps, extra, road], [road_table, card],
                                                api_visibility="private", concurrency_id="score",
                                                show_progress_on=[road_table])


def build_demo(queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    """The whole page: the "Explain" and "Faithfulness" tabs sharing one per-session state, and a
    bounded queue (``queue_size`` waiting requests at most)."""
    with gr.Blocks(title="Fusion-CAM explorer", delete_cache=(3600, 3600)) as demo:
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown(text.INTRO)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Explain", id="explain"):
                explain_ui = explain_tab(session)
                wire_explain_tab(explain_ui)
            with gr.Tab("Compare", id="compare", elem_id="compare-tab"):
                compare_ui = compare_tab(EXAMPLES, SESSION_TTL_S)
                wire_compare_tab(compare_ui, EXPLAIN_CONCURRENCY)
            with gr.Tab("Faithfulness", id="faithfulness"):
                faithfulness_tab(session)
            with gr.Tab("Sanity check", id="sanity"):
                sanity_tab(session)
        share_handlers.wire(demo, explain_ui, compare_ui, tabs)   # the share button; ?share=TOKEN links
    demo.queue(max_size=queue_size, default_concurrency_limit=2)
    return demo


demo = build_demo()

if __name__ == "__main__":
    tune_host_allocator()
    warm_up_in_background()
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), theme=gr.themes.Soft(), css=CSS,
                **LAUNCH_OPTIONS)
