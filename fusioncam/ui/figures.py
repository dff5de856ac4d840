"""Pictures for the page: map overlays, the β/γ weight chart and the hover view (plotly)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from fusioncam.explain import MAP_NAMES
from fusioncam.render import overlay

MAP_TITLES = {
    "gradcam": "Grad-CAM",
    "denoised": "Denoised Grad-CAM",
    "scorecam": "Score-CAM",
    "combined": "Combined",
    "fusion": "Fusion-CAM",
    "agreement": "Agreement",
}
HOVER_GRID = 64   # the hover view samples each map on this grid (keeps the page payload small)
COLORS = {"denoised": "#4C78A8", "region": "#F58518", "combined": "#54A24B"}


def overlays(display: Image.Image, maps: dict[str, np.ndarray], colormap: str, opacity: float,
             names: tuple[str, ...] = MAP_NAMES) -> list[np.ndarray]:
    """Each named map drawn over the display image (uint8 RGB, the display image's size)."""
    return [overlay(display, maps[name], colormap, opacity) for name in names]


def captioned(picture: np.ndarray, caption: str) -> np.ndarray:
    """``picture`` (uint8 RGB) with ``caption`` on a dark band across its top: a partial map says
    how far it is on the picture itself, so the API's image outputs stay plain pictures."""
    image = Image.fromarray(picture)
    size = max(12, image.width // 28)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle((0, 0, image.width, int(size * 1.6)), fill=(0, 0, 0, 170))
    draw.text((size // 2, size // 4), caption, fill=(255, 255, 255, 255), font=font)
    return np.asarray(image)


def value_range(values: list[float], headroom: float = 0.2) -> list[float]:
    """A y-range holding 0, every value, and ``headroom`` × the span beyond the tallest bar (and below
    the deepest negative one) for the value printed outside each bar."""
    low, high = min(0.0, *values), max(0.0, *values)
    span = (high - low) or 1.0
    return [low - headroom * span if low < 0 else 0.0, high + headroom * span if high > 0 or low == 0 else 0.0]


def weights_figure(report: dict[str, Any]) -> go.Figure:
    """Grouped bars: β (probability gain of each masked input), β̂ (shares in the combined map)
    and γ (shares in Fusion-CAM). The y-range is set from the data so no bar or label is clipped;
    the one-row legend (named like the map cards) sits above the plot, clear of the bars and of the
    unrotated group names."""
    betas, gammas = report["betas"], report["gammas"]
    groups = ["β<br>confidence<br>gain", "β̂<br>share in<br>combined", "γ<br>share in<br>Fusion-CAM"]
    series = {
        "denoised": ("② Denoised", [betas["denoised"], betas["denoised_hat"], None]),
        "region": ("③ Score-CAM", [betas["region"], betas["region_hat"], gammas["region"]]),
        "combined": ("④ Combined", [betas["combined"], None, gammas["combined"]]),
    }
    figure = go.Figure()
    for key, (label, values) in series.items():
        figure.add_bar(name=label, x=groups, y=values, marker_color=COLORS[key],
                       text=[None if v is None else f"{v:.3f}" for v in values], textposition="outside",
                       cliponaxis=False, hovertemplate=f"{label}<br>%{{x}} = %{{y:.4f}}<extra></extra>")
    shown = [v for _, values in series.values() for v in values if v is not None]
    # The top margin leaves room for Gradio's label chip over the figure and, under it, the legend
    # (one row, two on a phone).
    figure.update_layout(barmode="group", height=370, margin={"l": 40, "r": 10, "t": 90, "b": 10},
                         legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                         yaxis={"title": "weight", "range": value_range(shown)}, xaxis={"tickangle": 0},
                         uniformtext={"minsize": 9, "mode": "show"}, template="plotly_white")
    figure.add_hline(y=0, line_width=1, line_color="#888")
    return figure


def _data_uri(photo: Image.Image) -> str:
    """A JPEG data URI of a photo (the heat map on top of it is drawn by plotly, not compressed)."""
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample(saliency: np.ndarray, grid: int) -> np.ndarray:
    """``saliency`` averaged down to ``grid × grid`` cells."""
    return np.asarray(Image.fromarray(saliency.astype(np.float32), mode="F").resize((grid, grid), Image.Resampling.BOX))


def hover_figure(image: Image.Image, maps: dict[str, np.ndarray], colormap: str, grid: int = HOVER_GRID) -> go.Figure:
    """The image as the model sees it with Fusion-CAM on top; hovering shows every map's value there."""
    height, width = maps["fusion"].shape
    background = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    samples = np.stack([_sample(maps[name], grid) for name in MAP_NAMES], axis=-1).round(3)
    centres_x = (np.arange(grid) + 0.5) * width / grid
    centres_y = (np.arange(grid) + 0.5) * height / grid
    lines = "<br>".join(f"{MAP_TITLES[name]}: %{{customdata[{i}]:.2f}}" for i, name in enumerate(MAP_NAMES))
    figure = go.Figure(go.Image(source=_data_uri(background), hoverinfo="skip"))
    figure.add_heatmap(z=samples[..., MAP_NAMES.index("fusion")], x=centres_x, y=centres_y, customdata=samples,
                       zmin=0, zmax=1, zsmooth="best", opacity=0.45, colorscale=colormap,
                       hovertemplate=lines + "<extra></extra>",
                       colorbar={"title": {"text": "Fusion-CAM"}, "thickness": 12})
    figure.update_layout(height=420, margin={"l": 10, "r": 10, "t": 10, "b": 10}, template="plotly_white")
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x")
    return figure
