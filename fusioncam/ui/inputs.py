"""An image input that reports unreadable uploads in the library's plain words."""

from __future__ import annotations

from typing import Any

import gradio as gr

from fusioncam.images import InputError, load_image


class ImageInput(gr.Image):
    """``gr.Image`` whose upload errors become a ``gr.Error`` with :func:`~fusioncam.images.load_image`'s
    message, instead of Gradio's internal "could not preprocess" report."""

    is_template = True   # the page draws it with Gradio's own image component

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except Exception as error:   # Pillow and Gradio raise many types for a bad file
            message = f"The upload could not be read as an image ({type(error).__name__})."
            if payload is not None and payload.path:
                try:
                    load_image(payload.path)
                except InputError as plain:
                    message = str(plain)
            raise gr.Error(message, title="Cannot read this image") from None
