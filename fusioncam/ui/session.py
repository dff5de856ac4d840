"""One browser session's explanation, kept in ``gr.State`` (never shared between sessions), and
the session's current generation, kept where every event of the session can read it."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fusioncam.explain import Explanation, FusionParams, RegionEvidence
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
    generation: int
    evidence: RegionEvidence
    params: FusionParams
    maps: dict[str, np.ndarray]
    report: dict[str, Any]
    display: Image.Image
    colormap: str
    opacity: float

    def with_fusion(self, evidence: RegionEvidence, params: FusionParams, maps: dict[str, np.ndarray],
                    report: dict[str, Any]) -> Session:
        """A copy with a new fusion of the same evidence."""
        return replace(self, evidence=evidence, params=params, maps=maps, report=report)

    def with_style(self, colormap: str, opacity: float) -> Session:
        """A copy remembering how the maps are now drawn."""
        return replace(self, colormap=colormap, opacity=opacity)

    def explanation(self, model: LoadedModel) -> Explanation:
        """The current fusion as a library :class:`Explanation` (for the export)."""
        return Explanation(model, self.evidence, self.params, self.maps, self.report)


class Generations:
    """The current generation of each browser session: a counter that every new explanation
    advances (:meth:`begin`), so that a stage or re-fusion of an older explanation can tell it
    is stale (:meth:`is_current`) and change nothing.

    A ``gr.State`` value is the snapshot taken when an event fired, so the counter lives here,
    keyed by Gradio's session hash, for at most ``capacity`` sessions (the least recently
    advanced are forgotten first; a forgotten session simply starts again at a new number).

    It also knows which explanation each session is running (:meth:`claim`, :meth:`release`):
    an upload starts one by itself, and a click on Explain a moment later, while the session's
    ``gr.State`` is still empty, would otherwise run the same Score-CAM a second time and blank
    the first one's maps when it begins.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._current: OrderedDict[str, int] = OrderedDict()
        self._running: dict[str, tuple[Hashable, object]] = {}   # session → (its newest request, token)
        self._next = 0
        self._lock = threading.Lock()

    def begin(self, session: str) -> int:
        """A new generation for ``session``, now its current one (unique across sessions)."""
        with self._lock:
            self._next += 1
            self._current[session] = self._next
            self._current.move_to_end(session)
            while len(self._current) > self.capacity:
                self._current.popitem(last=False)
            return self._next

    def is_current(self, session: str, generation: int) -> bool:
        """Whether ``generation`` is still ``session``'s newest explanation."""
        with self._lock:
            return self._current.get(session) == generation

    def claim(self, session: str, request: Hashable) -> object | None:
        """A token for explaining ``request`` on ``session``, now the newest explanation it runs;
        ``None`` when that newest one is already this same ``request`` (its result will be
        shown, so a second run would only repeat it)."""
        with self._lock:
            running = self._running.get(session)
            if running is not None and running[0] == request:
                return None
            token = object()
            self._running[session] = (request, token)
            return token

    def release(self, session: str, token: object) -> None:
        """The explanation that got ``token`` has ended (finished, failed or dropped)."""
        with self._lock:
            running = self._running.get(session)
            if running is not None and running[1] is token:
                del self._running[session]


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
