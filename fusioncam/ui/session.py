"""One browser session's explanation, kept in ``gr.State`` (never shared between sessions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fusioncam.explain import Evidence, Explanation, FusionParams
from fusioncam.models import LoadedModel

DISPLAY_SIDE = 640   # overlays shown in the page are drawn at most this large
KEPT_SIDE = 1024     # the image a session keeps (hover view, export) is at most this large: ≤ 3 MB a session


@dataclass(frozen=True)
class Request:
    """Everything that decides the expensive evidence: change any of it and the network reruns."""

    image_digest: str
    model: str
    layer: str | None
    target: int | None
    baseline: str
    region_method: str
    top_k: int | None


@dataclass(frozen=True)
class Session:
    """The kept evidence of the last run, the maps and report of the current fusion, and how
    they are drawn (colour map, opacity)."""

    request: Request
    evidence: Evidence
    params: FusionParams
    maps: dict[str, np.ndarray]
    report: dict[str, Any]
    display: Image.Image
    colormap: str
    opacity: float

    def with_fusion(self, evidence: Evidence, params: FusionParams, maps: dict[str, np.ndarray],
                    report: dict[str, Any]) -> Session:
        """A copy with a new fusion of the same evidence."""
        return replace(self, evidence=evidence, params=params, maps=maps, report=report)

    def with_style(self, colormap: str, opacity: float) -> Session:
        """A copy remembering how the maps are now drawn."""
        return replace(self, colormap=colormap, opacity=opacity)

    def explanation(self, model: LoadedModel) -> Explanation:
        """The current fusion as a library :class:`Explanation` (for the export)."""
        return Explanation(model, self.evidence, self.params, self.maps, self.report)


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes: the identity of an uploaded image."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """A copy of ``image`` no larger than ``side`` pixels on its longer side, for fast overlays."""
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return small
