"""Uploads reach :func:`~fusioncam.images.load_image` undecoded: Gradio never opens the pixels.

Gradio's own ``gr.Image`` preprocessing opens every upload with Pillow and, when its mode is
not the component's ``image_mode``, decodes and re-saves the whole image before any handler
runs, with Pillow's decompression-bomb warning silenced. A small, highly compressed PNG
claiming 80 megapixels would be fully decoded there, past the library's pixel cap. Here the
component hands the handler the uploaded file's path as it is, and the handler's
:func:`~fusioncam.images.load_image` checks the header before decoding anything.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.processing_utils import save_base64_to_cache

NO_FILE = "The upload did not arrive as a file; please upload it again."
BAD_INLINE = "The image sent inline (a data: URL) is not valid base64; please upload the file instead."


def undecoded_upload(image: gr.Image) -> gr.Image:
    """Make ``image`` (``type="filepath"``) pass the uploaded file's path on without opening it;
    an image sent inline as a ``data:`` URL is written to Gradio's cache as bytes, undecoded.

    The component's ``preprocess`` is replaced on the instance: subclassing a Gradio component
    would make Gradio write a ``.pyi`` stub beside this file on import.
    """
    if image.type != "filepath":
        raise ValueError("only a type='filepath' image component can pass its upload on undecoded")

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            try:
                return save_base64_to_cache(payload.url, image.GRADIO_CACHE)
            except ValueError:   # binascii.Error: not base64
                raise gr.Error(BAD_INLINE, title="Cannot read this image") from None
        if not payload.path:
            raise gr.Error(NO_FILE, title="Cannot read this image")
        return str(payload.path)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image
