"""The "Sanity check" tab: does each map change when the model's weights are destroyed?

Layout and event wiring only; what the events do is in :mod:`fusioncam.ui.trust`.
"""

from __future__ import annotations

import gradio as gr

from fusioncam.gradient import GRADIENT_METHODS
from fusioncam.methods import METHOD_NAMES
from fusioncam.sanity import MODES, REGION_METHODS

from . import trust

INTRO = """
**Does the map depend on the model at all?** A heat map that stays the same when the model's weights are
replaced by random numbers explains the image (its edges, its centre), not what the model learnt. This check
(Adebayo et al., 2018) re-initialises a copy of the model from the classifier head down, one block at a time,
explains the same image for the same class after each step, and measures how similar each map stays to the
original (Spearman rank correlation and SSIM). **A trustworthy map falls.** The loaded model is never changed.
"""
SLOW = " (slow: reruns Score-CAM at every step)"
MODE_INFO = ("cascading: each step adds one more randomised block, from the head down; "
             "independent: one block at a time, the rest intact.")
METHODS_INFO = ("The gradient methods take seconds in all (one pass per step serves the four). Score-CAM and "
                "Fusion-CAM rerun Score-CAM at every step: about 13 Score-CAM runs — minutes on a CPU.")


def sanity_tab(session: gr.State) -> None:
    """The tab's components (stable ``elem_id``s) and its events, on the shared per-session ``session``."""
    gr.Markdown(INTRO)
    choices = [(METHOD_NAMES[m], m) for m in GRADIENT_METHODS] + [(METHOD_NAMES[m] + SLOW, m) for m in REGION_METHODS]
    with gr.Row(equal_height=False):
        methods = gr.CheckboxGroup(choices, value=list(GRADIENT_METHODS), label="Maps to check", info=METHODS_INFO,
                                   elem_id="sanity-methods")
        mode = gr.Radio(list(MODES), value="cascading", label="Randomisation", info=MODE_INFO, elem_id="sanity-mode")
    run = gr.Button("Run the sanity check", variant="primary", elem_id="sanity-run")
    status = gr.Markdown(trust.sanity_cost(None, list(GRADIENT_METHODS)), elem_id="sanity-status")
    curves = gr.Plot(label="Similarity to the original map after each randomisation step", elem_id="sanity-curves")
    strip = gr.Image(label="The maps after each step (a row per method; column 0 is the intact model)",
                     format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="sanity-strip")
    methods.change(trust.sanity_cost, [session, methods], status, api_visibility="private", queue=False)
    run.click(trust.sanity, [session, methods, mode], [status, curves, strip], api_name="sanity",
              concurrency_id="explain", concurrency_limit=2, show_progress_on=[curves])
