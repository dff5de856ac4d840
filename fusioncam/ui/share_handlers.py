"""The "Share a link" button of the Explain tab, and opening any shared link (``?share=TOKEN``).

Sharing keeps the session's explanation (an immutable :class:`~fusioncam.ui.session.Session`)
in :data:`~fusioncam.ui.sharing.SHARED`; opening a link copies it into the visitor's own session
under a new generation, so the visitor's page and live λ card work on it as on their own
explanation, and nothing the visitor does changes the kept copy. The image travels as a PNG of
the kept view, and the visitor's session names that file's digest as its image, so the page's
own events see "this image is already explained".
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from . import compare_handlers, handlers, text
from .catalog import DEFAULT_LAYER, MODELS, TOP_CLASS, class_choices, layer_choices
from .session import Session, file_digest
from .sharing import SHARE_TTL_S, SHARED, Shared, share_link, sharing_enabled

SHARE_DIR = Path(tempfile.gettempdir()) / "fusioncam-shared"
#: The Explain tab's inputs a link restores, besides :data:`handlers.EXPLAIN_OUTPUTS`: λ first, the image
#: last (each input that changes fires an event that reads the others: it must find them all set).
RESTORED_INPUTS = ("strength", "model", "theta", "weights", "baseline", "gradient-method", "region-method", "top-k",
                   "colormap", "opacity", "image")
#: What a link's note and text box show, after :data:`RESTORED_INPUTS` on opening.
SHARE_OUTPUTS = ("share-url", "share-note")
COMPONENT_NAMES = {"weights": "weights-plot"}   # EXPLAIN_OUTPUTS name → the Explain tab's ``ui`` key


def share_controls(prefix: str, what: str = "explanation") -> dict[str, gr.components.Component]:
    """The "Share a link" button (``#PREFIX``), the copyable link (``#PREFIX-url``) and the note
    saying until when it works (``#PREFIX-note``); with sharing off only the note shows, saying so."""
    enabled = sharing_enabled()
    with gr.Group():
        button = gr.Button(f"Share a link to this {what}", elem_id=prefix, visible=enabled)
        url = gr.Textbox(label="Link (copy it; it holds only a random key)", elem_id=f"{prefix}-url",
                         interactive=False, buttons=["copy"], visible=enabled,
                         placeholder="Press the button above to make a link.")
    note = gr.Markdown("" if enabled else text.SHARE_OFF, elem_id=f"{prefix}-note")
    return {prefix: button, f"{prefix}-url": url, f"{prefix}-note": note}


def share_explanation(session: Session | None, request: gr.Request = None) -> tuple[str, str]:
    """The link to the session's current explanation, and the note on who sees it until when."""
    if not sharing_enabled():
        raise gr.Error(text.SHARE_OFF, title="Cannot share")
    if session is None:
        raise gr.Error(text.NOTHING_TO_SHARE, title="Nothing to share yet")
    partial = not session.report.get("progress", {"final": True})["final"]   # an anytime update
    if partial or not handlers.GENERATIONS.is_current(handlers.session_key(request), session.generation):
        raise gr.Error(text.SHARE_BUSY, title="Not yet")
    with handlers.user_errors("Cannot share"):
        url, entry = share_link("explain", session, request)
    return url, text.share_note(entry.expires, SHARED.capacity)


def open_link(request: gr.Request = None) -> tuple:
    """On page load: the page for the ``?share=TOKEN`` in its address, or nothing changed.

    Returns :data:`handlers.EXPLAIN_OUTPUTS`, then :data:`RESTORED_INPUTS`, :data:`SHARE_OUTPUTS`,
    :data:`compare_handlers.OPEN_OUTPUTS` and the selected tab. A link that is malformed,
    tampered with, unknown or expired, or any link while sharing is off, leaves the empty
    explorer with one sentence in its summary.
    """
    params = dict(getattr(request, "query_params", None) or {})
    if "share" not in params:
        return _nothing()
    entry = SHARED.get(params["share"]) if sharing_enabled() else None
    if entry is None:
        return _nothing(text.BAD_LINK if sharing_enabled() else text.SHARE_OFF)
    with handlers.user_errors("Cannot open this link"):
        if entry.kind == "compare":
            return (*_nothing()[:-len(compare_handlers.OPEN_OUTPUTS) - 1],
                    *compare_handlers.reopen(entry, request, str(kept_picture(entry.value.original))),
                    gr.update(selected="compare"))
        return (*_reopen_explanation(entry, request), *(gr.skip() for _ in compare_handlers.OPEN_OUTPUTS),
                gr.update(selected="explain"))


def _reopen_explanation(entry: Shared, request: gr.Request | None) -> tuple:
    """:data:`handlers.EXPLAIN_OUTPUTS`, :data:`RESTORED_INPUTS` and :data:`SHARE_OUTPUTS` for a
    shared Explain-tab session, now the visitor's session's current explanation."""
    kept: Session = entry.value
    picture = kept_picture(kept.evidence.image)
    generation = handlers.GENERATIONS.begin(handlers.session_key(request))
    session = replace(kept, generation=generation, request=replace(kept.request, image_digest=file_digest(picture)))
    model = MODELS.get(session.request.model)
    target = TOP_CLASS if session.request.target is None else str(session.request.target)
    finished = handlers._finished(session)
    restored = dict(zip(handlers.EXPLAIN_OUTPUTS, finished, strict=True))
    restored["target-class"] = gr.update(choices=class_choices(model.class_names, session.report["top5"]),
                                         value=target)
    restored["layer"] = gr.update(choices=layer_choices(model), value=session.request.layer or DEFAULT_LAYER)
    params, request_ = session.params, session.request
    inputs = {"image": str(picture), "model": request_.model, "theta": params.theta, "strength": params.strength,
              "weights": params.weights, "baseline": request_.baseline, "gradient-method": params.gradient_method,
              "region-method": request_.region_method,
              "top-k": request_.top_k if request_.top_k is not None else gr.skip(),
              "colormap": session.colormap, "opacity": session.opacity}
    return (*(restored[name] for name in handlers.EXPLAIN_OUTPUTS), *(inputs[name] for name in RESTORED_INPUTS),
            gr.skip(), text.opened_note(entry.expires))


def _nothing(message: str | None = None) -> tuple:
    """Every :func:`open_link` output left as it is, but the summary saying ``message`` if any."""
    outputs = [gr.skip() for _ in handlers.EXPLAIN_OUTPUTS]
    if message:
        outputs[handlers.EXPLAIN_OUTPUTS.index("summary")] = f"### {message}"
    return (*outputs, *(gr.skip() for _ in (*RESTORED_INPUTS, *SHARE_OUTPUTS, *compare_handlers.OPEN_OUTPUTS)),
            gr.skip())


def kept_picture(image: Any) -> Path:
    """The kept image as a PNG file under :data:`SHARE_DIR` (one file per picture, named by its
    pixels' digest; files older than a link's life are removed first)."""
    SHARE_DIR.mkdir(exist_ok=True)
    for old in SHARE_DIR.iterdir():
        if time.time() - old.stat().st_mtime > SHARE_TTL_S:
            old.unlink(missing_ok=True)
    picture = image.convert("RGB")
    digest = hashlib.sha1(picture.tobytes() + repr(picture.size).encode()).hexdigest()[:20]
    path = SHARE_DIR / f"shared-{digest}.png"
    if not path.exists():
        partial = path.with_suffix(".part")
        picture.save(partial, format="PNG")
        partial.replace(path)
    path.touch()
    return path


def wire(demo: gr.Blocks, explain_ui: dict[str, gr.components.Component],
         compare_ui: dict[str, gr.components.Component], tabs: gr.Tabs) -> None:
    """The Explain tab's share button, and opening ``?share=`` links when a page loads."""
    explain_ui["share"].click(share_explanation, explain_ui["session"], [explain_ui["share-url"],
                                                                         explain_ui["share-note"]],
                              api_name="share", concurrency_id="share", concurrency_limit=8)
    outputs = [explain_ui[COMPONENT_NAMES.get(name, name)] for name in handlers.EXPLAIN_OUTPUTS]
    outputs += [explain_ui[name] for name in (*RESTORED_INPUTS, *SHARE_OUTPUTS)]
    outputs += [compare_ui[name] for name in compare_handlers.OPEN_OUTPUTS]
    demo.load(open_link, None, [*outputs, tabs], api_visibility="private", concurrency_id="share",
              concurrency_limit=8)
