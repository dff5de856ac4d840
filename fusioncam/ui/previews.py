"""Previews travel as JPEG: pictures that are replaced within seconds are encoded cheaply.

Gradio encodes every picture an image output receives in the component's ``format`` (PNG here:
the final maps must show exactly what was computed, and their downloads keep every colour). A
busy CPU Space pays that on the server, for every visitor and every update. A preview — the
Grad-CAM overlays of the first update, the partial Score-CAM maps — is replaced by the final PNG
a few seconds later, so it goes out as a JPEG file instead: an image output passes a file path on
as it is (``gradio.image_utils.save_image``), and a file already in Gradio's cache under its
content hash is not copied again. A 600×400 overlay through the image output: 83 ms as PNG, 1.0 ms
as JPEG (2-core development machine, idle); a first update carries two of them per visitor.
"""

from __future__ import annotations

import io

import numpy as np
from gradio.processing_utils import save_bytes_to_cache
from gradio.utils import get_upload_folder
from PIL import Image

JPEG_QUALITY = 85   # no visible blocking on a smooth colour map; a fraction of the PNG's bytes


def jpeg_bytes(picture: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """``picture`` (uint8 RGB, H×W×3) encoded as a baseline JPEG."""
    with io.BytesIO() as buffer:
        Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()


def preview_file(picture: np.ndarray) -> str:
    """The path of ``picture`` as a JPEG in Gradio's cache (content-addressed: the same picture is
    one file), the value an image output shows as it is."""
    return save_bytes_to_cache(jpeg_bytes(picture), "preview.jpg", get_upload_folder())
