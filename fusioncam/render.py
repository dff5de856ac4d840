"""Colour maps and overlays: saliency maps in [0, 1] drawn on the display image.

Every colour map is a 256-entry RGB table (:func:`colour_table`): OpenCV's own tables for the
saliency maps, and one table of our own for the agreement map. A map value ``v`` is drawn with
the entry ``round(255 · v)``; a browser that draws with the same tables draws the same colours.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from PIL import Image

#: Colour maps for saliency maps (OpenCV's). ``jet`` is the papers'; viridis and cividis are
#: perceptually uniform and readable with colour-vision deficiency (cividis was designed for it).
#: magma is left out: its purple-to-pink run is the agreement map's.
COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "hot": cv2.COLORMAP_HOT,
}
COLOUR_BLIND_SAFE = ("viridis", "cividis")
#: The agreement map's own colour map, unlike any saliency map: near white where the two views
#: agree (S = 1), through pink to deep purple where they disagree (S = 0): ColorBrewer's RdPu
#: colours, reversed (lightness falls monotonically, so it reads in grey too). On its fixed 0–1
#: scale the colours change fastest between 1 and 0.5, where agreement values mostly lie: the
#: threshold S = 0.9 is already a clear pink, S = 0.7 a strong magenta.
AGREEMENT_COLORMAP = "agreement"
_AGREEMENT_ANCHORS = ((0.0, "#49006a"), (0.35, "#7a0177"), (0.55, "#ae017e"), (0.7, "#dd3497"), (0.8, "#f768a1"),
                      (0.85, "#fa9fb5"), (0.9, "#fcc5c0"), (0.95, "#fde0dd"), (1.0, "#fff7f3"))


@cache
def colour_table(name: str) -> np.ndarray:
    """The ``256×3`` uint8 RGB table of a colour map in :data:`COLORMAPS` or :data:`AGREEMENT_COLORMAP`."""
    if name == AGREEMENT_COLORMAP:
        anchors = np.array([[int(code[i:i + 2], 16) for i in (1, 3, 5)] for _, code in _AGREEMENT_ANCHORS],
                           dtype=np.float64)
        positions = 255 * np.array([value for value, _ in _AGREEMENT_ANCHORS])
        table = np.stack([np.interp(np.arange(256), positions, anchors[:, c]) for c in range(3)], axis=1)
        result = np.round(table).astype(np.uint8)
    elif name in COLORMAPS:
        levels = np.arange(256, dtype=np.uint8)[:, None]
        result = cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[name]), cv2.COLOR_BGR2RGB)[:, 0]
    else:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    result.setflags(write=False)
    return result


def heatmap(saliency: np.ndarray, colormap: str = "jet", size: tuple[int, int] | None = None) -> np.ndarray:
    """An ``H×W×3`` uint8 RGB picture of ``saliency`` (values in [0, 1]), resized to
    ``size = (width, height)`` bilinearly when given: ``table[round(255 · v)]``."""
    table = colour_table(colormap)
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float32))
    if size is not None and (values.shape[1], values.shape[0]) != tuple(size):
        values = cv2.resize(values, tuple(size), interpolation=cv2.INTER_LINEAR)
    levels = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return table[levels]


def overlay(image: Image.Image | np.ndarray, saliency: np.ndarray, colormap: str = "jet",
            opacity: float = 0.5) -> np.ndarray:
    """``(1 − opacity) · image + opacity · colour(saliency)`` at the image's own size, uint8 RGB."""
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    colour = heatmap(saliency, colormap, size=(base.shape[1], base.shape[0]))
    return cv2.addWeighted(base, 1.0 - opacity, colour, opacity, 0.0)


def agreement_overlay(image: Image.Image | np.ndarray, agreement: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The agreement map ``S`` on its fixed 0–1 scale, in :data:`AGREEMENT_COLORMAP`, over a grey copy of
    the image (Pillow's luma ``L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16``), so colour shows only the map."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return overlay(picture.convert("RGB").convert("L").convert("RGB"), agreement, AGREEMENT_COLORMAP, opacity)


def save_png(picture: np.ndarray, path: str) -> None:
    """Write an RGB uint8 array as a lossless PNG."""
    Image.fromarray(picture).save(path, format="PNG")
