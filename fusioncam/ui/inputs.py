"""Upload errors in the library's plain words."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from fusioncam.images import InputError, load_image


def plain_upload_errors(image: gr.Image) -> gr.Image:
    """Make ``image`` report an unreadable upload with :func:`~fusioncam.images.load_image`'s
    sentence (a ``gr.Error``) instead of Gradio's internal "could not preprocess" report.

    The component's ``preprocess`` is wrapped on the instance: subclassing a Gradio component
    would make Gradio write a ``.pyi`` stub beside this file on import.
    """
    original = image.preprocess

    @functools.wraps(original)
    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Exception as error:   # Pillow and Gradio raise many types for a bad file
            message = f"The upload could not be read as an image ({type(error).__name__})."
            if payload is not None and getattr(payload, "path", None):
                try:
                    load_image(payload.path)
                except InputError as plain:
                    message = str(plain)
            raise gr.Error(message, title="Cannot read this image") from None

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image
