"""Pictures of a sanity check (:mod:`fusioncam.sanity`), drawn with OpenCV and numpy.

:func:`strip`: one row per method, its original map then its map after each randomisation
step. :func:`sanity_picture`: Spearman and SSIM against the step (one line per method), above
the strip — the ``sanity.png`` of ``python -m fusioncam sanity``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .render import heatmap
from .sanity import SanityResult

#: Line colours (RGB), one per method in order; the same hues as the app's charts.
COLOURS = ((76, 120, 168), (245, 133, 24), (228, 87, 86), (114, 183, 178), (84, 162, 75), (178, 121, 162),
           (157, 117, 93), (186, 176, 172))
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (30, 30, 30), (120, 120, 120), (225, 225, 225)
LABEL_WIDTH = 110


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.42, colour: tuple = BLACK,
          thickness: int = 1) -> None:
    cv2.putText(canvas, text.encode("ascii", "replace").decode(), origin, FONT, scale, colour, thickness,
                cv2.LINE_AA)


def strip(result: SanityResult, colormap: str = "jet", tile: int = 64, gap: int = 2) -> np.ndarray:
    """RGB uint8: per method (rows) the original map and the map after each step (columns),
    numbered above; step ``i`` randomised ``result.steps[i − 1]`` (in cascading mode, and all before it)."""
    columns = len(result.steps) + 1
    header = 18
    height = header + len(result.original) * (tile + gap)
    canvas = np.full((height, LABEL_WIDTH + columns * (tile + gap), 3), 255, dtype=np.uint8)
    for column in range(columns):
        x = LABEL_WIDTH + column * (tile + gap)
        _text(canvas, "orig." if column == 0 else str(column), (x + 4, header - 5), 0.4, GREY)
    for row, (name, original) in enumerate(result.original.items()):
        y = header + row * (tile + gap)
        _text(canvas, name, (6, y + tile // 2 + 5), 0.45)
        for column, saliency in enumerate([original, *result.maps[name]]):
            x = LABEL_WIDTH + column * (tile + gap)
            canvas[y:y + tile, x:x + tile] = heatmap(saliency, colormap, size=(tile, tile))
    return canvas


def _panel(result: SanityResult, values: dict[str, list[float]], title: str, width: int = 470,
           height: int = 290) -> np.ndarray:
    """One chart: similarity (from −1 to 1) against the step (0 = the intact model, similarity 1)."""
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 44, 12, 26, 34
    steps = len(result.steps)

    def point(step: int, value: float) -> tuple[int, int]:
        x = left + step * (width - left - right) / max(steps, 1)
        y = top + (1 - value) / 2 * (height - top - bottom)
        return round(x), round(y)

    _text(canvas, title, (left, 17), 0.5)
    for level in (-1.0, -0.5, 0.0, 0.5, 1.0):
        y = point(0, level)[1]
        cv2.line(canvas, (left, y), (width - right, y), LIGHT if level else GREY, 1)
        _text(canvas, f"{level:g}", (4, y + 4), 0.38, GREY)
    for step in range(steps + 1):
        x = point(step, 0)[0]
        cv2.line(canvas, (x, height - bottom), (x, height - bottom + 4), GREY, 1)
        if steps <= 20 or step % 2 == 0:
            _text(canvas, str(step), (x - 4, height - bottom + 16), 0.36, GREY)
    _text(canvas, "randomisation step (0 = intact)", (left + 60, height - 4), 0.4, GREY)
    for index, (_name, series) in enumerate(values.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = np.array([point(step, value) for step, value in enumerate([1.0, *series])], dtype=np.int32)
        cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
        for x, y in points:
            cv2.circle(canvas, (int(x), int(y)), 3, colour, -1, cv2.LINE_AA)
    return canvas


def sanity_picture(result: SanityResult, colormap: str = "jet") -> np.ndarray:
    """RGB uint8: a title, the Spearman and SSIM charts with a legend, the step names and the strip."""
    charts = np.concatenate([_panel(result, result.spearman, "Spearman rank correlation with the original map"),
                             _panel(result, result.ssim, "SSIM with the original map")], axis=1)
    maps = strip(result, colormap)
    width = max(charts.shape[1], maps.shape[1]) + 20
    legend_rows = -(-len(result.original) // 4)
    names = [f"{i} {name}" for i, name in enumerate(result.steps, start=1)]
    name_lines = [" | ".join(names[i:i + 8]) for i in range(0, len(names), 8)]
    top = 34 + 22 * legend_rows
    height = top + charts.shape[0] + 12 + 18 * len(name_lines) + 8 + maps.shape[0] + 10
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    _text(canvas, f"Sanity check ({result.mode} randomisation, seed {result.seed}): {result.model}, layer "
                  f"{result.layer}, class {result.target}", (10, 20), 0.5)
    for index, name in enumerate(result.original):
        x, y = 10 + (index % 4) * 200, 40 + (index // 4) * 22
        colour = COLOURS[index % len(COLOURS)]
        cv2.line(canvas, (x, y - 4), (x + 24, y - 4), colour, 3, cv2.LINE_AA)
        passed = "fell" if result.passed(name) else "did NOT fall"
        _text(canvas, f"{name}: {passed}", (x + 30, y), 0.42)
    canvas[top:top + charts.shape[0], 10:10 + charts.shape[1]] = charts
    y = top + charts.shape[0] + 12
    for line in name_lines:
        _text(canvas, "steps: " + line if line is name_lines[0] else "       " + line, (10, y + 12), 0.4, GREY)
        y += 18
    y += 8
    canvas[y:y + maps.shape[0], 10:10 + maps.shape[1]] = maps
    return canvas
