"""Colour maps and overlays (OpenCV): saliency maps in [0, 1] drawn on the display image."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}


def heatmap(saliency: np.ndarray, colormap: str = "jet", size: tuple[int, int] | None = None) -> np.ndarray:
    """An ``H×W×3`` uint8 RGB picture of ``saliency`` (values in [0, 1]), resized to
    ``size = (width, height)`` bilinearly when given."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float32))
    if size is not None and (values.shape[1], values.shape[0]) != tuple(size):
        values = cv2.resize(values, tuple(size), interpolation=cv2.INTER_LINEAR)
    levels = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: Image.Image | np.ndarray, saliency: np.ndarray, colormap: str = "jet",
            opacity: float = 0.5) -> np.ndarray:
    """``(1 − opacity) · image + opacity · colour(saliency)`` at the image's own size, uint8 RGB."""
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    colour = heatmap(saliency, colormap, size=(base.shape[1], base.shape[0]))
    return cv2.addWeighted(base, 1.0 - opacity, colour, opacity, 0.0)


def save_png(picture: np.ndarray, path: str) -> None:
    """Write an RGB uint8 array as a lossless PNG."""
    Image.fromarray(picture).save(path, format="PNG")
