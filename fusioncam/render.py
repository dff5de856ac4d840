"""Colour maps and overlays: saliency maps in [0, 1] drawn on the display image.

Every colour map is a 256-entry RGB table (:func:`colour_table`): OpenCV's own tables for the
saliency maps, and tables of our own for the agreement map and for the difference of two maps.
A map value ``v`` is drawn with the entry ``round(255 · v)`` (a difference ``d`` in [−1, 1] with
``round(255 · (d + 1) / 2)``); a browser that draws with the same tables draws the same colours.
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
#: The difference ``N(F_A) − N(F_B)``'s diverging colour map, unlike any saliency map: ColorBrewer's
#: RdBu (readable with the common colour-vision deficiencies), blue where B looks more (−1), near
#: white where both look alike (0), red where A looks more (+1).
DIFFERENCE_COLORMAP = "difference"
_DIFFERENCE_ANCHORS = ((0.0, "#053061"), (0.1, "#2166ac"), (0.2, "#4393c3"), (0.3, "#92c5de"), (0.4, "#d1e5f0"),
                       (0.5, "#f7f7f7"), (0.6, "#fddbc7"), (0.7, "#f4a582"), (0.8, "#d6604d"), (0.9, "#b2182b"),
                       (1.0, "#67001f"))
_ANCHORS = {AGREEMENT_COLORMAP: _AGREEMENT_ANCHORS, DIFFERENCE_COLORMAP: _DIFFERENCE_ANCHORS}
OUTSIDE_DIM = 0.45   # brightness of the image where a difference was not compared
LEGEND_FONT = cv2.FONT_HERSHEY_DUPLEX


@cache
def colour_table(name: str) -> np.ndarray:
    """The ``256×3`` uint8 RGB table of a colour map in :data:`COLORMAPS`, :data:`AGREEMENT_COLORMAP`
    or :data:`DIFFERENCE_COLORMAP`."""
    if name in _ANCHORS:
        anchors = np.array([[int(code[i:i + 2], 16) for i in (1, 3, 5)] for _, code in _ANCHORS[name]],
                           dtype=np.float64)
        positions = 255 * np.array([value for value, _ in _ANCHORS[name]])
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
    return overlay(_grey(image), agreement, AGREEMENT_COLORMAP, opacity)


def _grey(image: Image.Image | np.ndarray) -> np.ndarray:
    """A grey RGB copy of the image (Pillow's luma), so colour drawn over it shows only a map."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(picture.convert("RGB").convert("L").convert("RGB"))


def difference_overlay(image: Image.Image | np.ndarray, difference: np.ndarray, opacity: float = 0.5,
                       shared: np.ndarray | None = None) -> np.ndarray:
    """The difference ``d = N(F_A) − N(F_B)`` (values in [−1, 1]) over a grey copy of the image at
    the image's own size: ``(1 − opacity) · grey + opacity · table[round(255 · (d + 1) / 2)]`` in
    :data:`DIFFERENCE_COLORMAP`; where ``shared`` (a bool mask on ``difference``'s grid) is false,
    the maps were not compared: :func:`dim_outside`."""
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    grey = _grey(image)
    size = (grey.shape[1], grey.shape[0])
    values = np.nan_to_num(np.asarray(difference, dtype=np.float32))
    if (values.shape[1], values.shape[0]) != size:
        values = cv2.resize(values, size, interpolation=cv2.INTER_LINEAR)
    levels = np.clip((values + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    picture = cv2.addWeighted(grey, 1.0 - opacity, colour_table(DIFFERENCE_COLORMAP)[levels], opacity, 0.0)
    return picture if shared is None else dim_outside(picture, grey, shared)


def dim_outside(picture: np.ndarray, image: Image.Image | np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``picture`` where ``inside`` (a bool mask, resized to the picture by nearest neighbour) is
    true, elsewhere a grey copy of ``image`` (same size) dimmed to :data:`OUTSIDE_DIM`: the part
    a model never saw, or where two maps were not compared."""
    grey = _grey(image)
    mask = np.asarray(inside, dtype=np.uint8)
    if mask.shape != picture.shape[:2]:
        mask = cv2.resize(mask, (picture.shape[1], picture.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.where(mask[..., None].astype(bool), picture, (grey * OUTSIDE_DIM).astype(np.uint8))


def difference_legend(width: int = 512, label_a: str = "A", label_b: str = "B") -> np.ndarray:
    """The difference's legend, an RGB uint8 strip ``width`` pixels wide: the colour bar from −1
    (left, "B looks more") through 0 ("both alike") to +1 (right, "A looks more"), labelled
    beneath in ASCII (OpenCV's Hershey font), shrunk to fit side by side."""
    bar_h, text_h, margin = max(6, width // 32), max(14, width // 22), max(4, width // 64)
    canvas = np.full((bar_h + text_h + 2 * margin, width, 3), 255, np.uint8)
    levels = np.round(np.linspace(0, 255, width - 2 * margin)).astype(np.uint8)
    canvas[margin:margin + bar_h, margin:width - margin] = colour_table(DIFFERENCE_COLORMAP)[levels][None]
    baseline = margin + bar_h + int(text_h * 0.85)
    labels = [text.encode("ascii", "replace").decode("ascii")
              for text in (f"{label_b} looks more", "both alike", f"{label_a} looks more")]
    natural = sum(cv2.getTextSize(text, LEGEND_FONT, 1.0, 1)[0][0] for text in labels)
    scale = min(text_h / 36, (width - 4 * margin) / natural)   # the three labels side by side, apart
    widths = [cv2.getTextSize(text, LEGEND_FONT, scale, 1)[0][0] for text in labels]
    left_end, right_start = margin + widths[0], width - margin - widths[2]
    starts = (margin, (left_end + right_start - widths[1]) // 2, right_start)   # the middle one between
    for text, x in zip(labels, starts, strict=True):
        cv2.putText(canvas, text, (x, baseline), LEGEND_FONT, scale, (20, 20, 20), 1, cv2.LINE_AA)
    return canvas


def save_png(picture: np.ndarray, path: str) -> None:
    """Write an RGB uint8 array as a lossless PNG."""
    Image.fromarray(picture).save(path, format="PNG")
