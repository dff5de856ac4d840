"""The live map cards: Fusion-CAM and its agreement map drawn by the page itself.

``live_map("fusion", label)`` and ``live_map("agreement", label)`` are ``gr.HTML`` components
(``#map-fusion``, ``#map-agreement``) whose value is a :func:`fusioncam.live.live_payload` (or a
:func:`fusioncam.live.blank_payload`, or ``None``: empty cards). The page computes
``S = clip(1 − λ|L1 − L2|, 0, 1)``, ``F = S·max(L1, L2) + (1 − S)(L1 + L2)/2`` and ``N(F)``,
colours them and draws them over the photo on a ``<canvas>``, following the ``#strength`` slider
(and its number box), the ``#colormap`` dropdown and the ``#opacity`` slider with no server call.

Once λ stops moving (250 ms after the slider's last ``input`` or ``change``: the end of a drag, a
key press, a typed number), the fusion card fires its custom ``commit`` event once, never for a λ the
server already has. Wire it as ``card.commit(fn, inputs, outputs)``; ``fn`` takes a
``gr.EventData`` argument whose ``.strength`` is the λ the page shows and whose ``.generation`` and
``.key`` name the payload it was drawn from.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from fusioncam.live import DISAGREEMENT_THRESHOLD
from fusioncam.render import AGREEMENT_COLORMAP, COLORMAPS, COLOUR_BLIND_SAFE, colour_table

KINDS = {"fusion": "map-fusion", "agreement": "map-agreement"}
COMMIT_DELAY_MS = 250   # the commit fires this long after the slider's last move
SCRIPT = (Path(__file__).with_name("live.js")).read_text(encoding="utf-8")
#: The colour-map dropdown's choices (label, value): says which maps are colour-blind safe.
COLORMAP_CHOICES = [(f"{name} (colour-blind safe)" if name in COLOUR_BLIND_SAFE
                     else "jet (the papers' map)" if name == "jet" else name, name) for name in COLORMAPS]

TEMPLATE = """
<div class="fc-live" data-kind="{kind}" data-state="empty">
  <div class="fc-label">{label}</div>
  <div class="fc-frame">
    <canvas class="fc-canvas" width="0" height="0" role="img" aria-label="{label} over the image" hidden></canvas>
    <div class="fc-empty">{empty}</div>
  </div>
  <div class="fc-legend" aria-hidden="true">
    <canvas class="fc-ramp" width="256" height="1"></canvas>
    {ticks}
  </div>
  <div class="fc-note" aria-live="polite"></div>
</div>
"""
TICKS = {
    "fusion": '<div class="fc-ticks"><span>0 · least</span><span>most important · 1</span></div>',
    "agreement": (f'<div class="fc-ticks"><span>0 · disagree</span><span>agree · 1</span></div>'
                  f'<div class="fc-mark" style="left: {DISAGREEMENT_THRESHOLD * 100:g}%" '
                  f'title="S = {DISAGREEMENT_THRESHOLD:g}"></div>'),
}
CARD_CSS = """
.fc-live { display: flex; flex-direction: column; gap: 6px; }
.fc-label { font-size: var(--block-label-text-size); font-weight: var(--block-label-text-weight);
  color: var(--block-label-text-color); }
.fc-canvas { display: block; width: 100%; height: auto; border-radius: var(--radius-sm); }
.fc-canvas[hidden], .fc-empty[hidden] { display: none; }
.fc-empty { display: flex; align-items: center; justify-content: center; aspect-ratio: 4 / 3;
  color: var(--body-text-color-subdued); font-size: var(--text-sm); border-radius: var(--radius-sm);
  border: 1px dashed var(--border-color-primary); }
.fc-legend { position: relative; }
.fc-ramp { display: block; width: 100%; height: 10px; border-radius: 2px; }
.fc-ticks { display: flex; justify-content: space-between; font-size: var(--text-xs);
  color: var(--body-text-color-subdued); }
.fc-mark { position: absolute; top: -3px; height: 16px; border-left: 2px solid var(--body-text-color); }
.fc-note { font-size: var(--text-sm); color: var(--body-text-color); min-height: 1.4em; }
"""
#: CSS for ``launch(css=…)`` with the image map cards made without a fixed ``height``: each
#: picture fills its card's width at its own aspect ratio, so the card is as tall as the picture
#: needs (a wide picture no longer sits in a tall, mostly empty box).
MAP_GRID_CSS = """
:is(#map-gradcam, #map-denoised, #map-scorecam, #map-combined) .image-container { padding-top: 30px; }
:is(#map-gradcam, #map-denoised, #map-scorecam, #map-combined) .image-frame { width: 100%; height: auto; }
:is(#map-gradcam, #map-denoised, #map-scorecam, #map-combined) .image-frame img {
  width: 100%; height: auto; object-fit: contain; }
:is(#map-fusion, #map-agreement) { min-width: min(160px, 100%) !important; }
:is(#map-fusion, #map-agreement) .html-container { padding: 6px var(--block-padding) var(--block-padding); }
"""


def _script(kind: str, state_element: str | None = None, controls: dict[str, str] | None = None) -> str:
    """The card's ``js_on_load``: its settings, the colour tables of :mod:`fusioncam.render`, then live.js."""
    names = [*COLORMAPS, AGREEMENT_COLORMAP]
    config = {
        "kind": kind,
        "stateElement": state_element,
        "luts": {name: colour_table(name).tobytes().hex() for name in names},
        "labels": {label: name for label, name in COLORMAP_CHOICES},
        "agreementColormap": AGREEMENT_COLORMAP,
        "threshold": DISAGREEMENT_THRESHOLD,
        "debounceMs": COMMIT_DELAY_MS,
    }
    if controls:   # the elem_ids of the λ slider, colour map and opacity followed instead of the Explain tab's
        config["controls"] = controls
    return f"const CONFIG = {json.dumps(config)};\n{SCRIPT}"


def live_map(kind: str, label: str, state_element: str | None = None, elem_id: str | None = None,
             controls: dict[str, str] | None = None) -> gr.HTML:
    """A live map card (``kind`` "fusion" → ``#map-fusion``, "agreement" → ``#map-agreement``),
    empty until its value is set to a payload. A payload with ``progress`` (a partial, anytime
    update) shows it in the card's label; the card writes ``partial`` or ``done`` into the element
    with id ``state_element`` (empty while it has no maps), when given. ``elem_id`` replaces the
    card's own id; ``controls`` maps any of ``strength``, ``colormap``, ``opacity`` to the ``elem_id``
    of the control the card follows instead (one not on the page leaves the payload's value)."""
    if kind not in KINDS:
        raise ValueError(f"unknown live map {kind!r}; choose one of {', '.join(KINDS)}")
    empty = "The fused map appears here." if kind == "fusion" else "Where the two views agree appears here."
    template = TEMPLATE.format(kind=kind, label=label, empty=empty, ticks=TICKS[kind])
    script = _script(kind, state_element, controls)
    return gr.HTML(None, html_template=template, css_template=CARD_CSS, js_on_load=script,
                   apply_default_css=False, container=True, elem_id=elem_id or KINDS[kind])

