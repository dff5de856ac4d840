"""Instant examples: the example images' evidence under the default settings, computed once and kept.

The examples are the first thing a visitor clicks. Their Score-CAM evidence (the expensive part)
under the default request — the default model, its default layer, the top class, the ``mean``
baseline, exact Score-CAM — is computed once in the background after start-up, at the scheduler's
lowest priority (every visitor's turn comes first), and kept; a click then only re-fuses
(no network for the default θ). Under ZeroGPU nothing runs the network in the background: the
cache fills when an example is first explained. Bounded by construction: one entry per example
image, for one model, keyed by the image file's digest and the model's weights (a model whose
weights changed gets its entries rebuilt, never trusted); a visitor's own upload is never kept here
unless its bytes are an example's.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from fusioncam.compiled import weights_stamp
from fusioncam.explain import FusionParams, RegionEvidence
from fusioncam.images import load_image
from fusioncam.models import LoadedModel
from fusioncam.scheduler import BACKGROUND

from . import compute
from .session import KEPT_SIDE, Request, display_image, file_digest

LOG = logging.getLogger(__name__)


def default_request(digest: str, model: str) -> Request:
    """The request an example click makes under the page's default settings."""
    return Request(digest, model, None, None, "mean", "scorecam", None)


class ExampleCache:
    """The kept Score-CAM evidence of the example images for one model (see the module doc)."""

    def __init__(self, paths: list[str | Path], model: str) -> None:
        self.model = model
        self._paths = {file_digest(path): Path(path) for path in paths}
        self._kept: dict[str, tuple[object, RegionEvidence]] = {}   # digest → (weights stamp, evidence)
        self._lock = threading.Lock()

    def cacheable(self, request: Request) -> bool:
        """Whether ``request`` is an example's under the default settings."""
        return request.image_digest in self._paths and request == default_request(request.image_digest, self.model)

    def get(self, request: Request, model: LoadedModel) -> RegionEvidence | None:
        """The kept evidence for ``request``, if it is cacheable and was made with ``model``'s current weights."""
        if not self.cacheable(request):
            return None
        with self._lock:
            stamp, evidence = self._kept.get(request.image_digest, (None, None))
        return evidence if evidence is not None and stamp == weights_stamp(model.module) else None

    def offer(self, request: Request, model: LoadedModel, evidence: RegionEvidence) -> None:
        """Keep ``evidence`` when ``request`` is cacheable and ``evidence`` is exact (not partial)."""
        if self.cacheable(request) and evidence.final:
            with self._lock:
                self._kept[request.image_digest] = (weights_stamp(model.module), evidence)

    def fill(self) -> int:
        """Explain every example not kept yet at the lowest priority; returns how many were made.
        A failure is logged and skipped: visitors then just compute that example themselves."""
        made = 0
        for digest, path in self._paths.items():
            request = default_request(digest, self.model)
            model = compute.MODELS.get(self.model)
            if self.get(request, model) is not None:
                continue
            owner = f"examples:{path.name}"
            try:
                image = load_image(str(path))
                evidence = compute.gather_gradients(self.model, image, None, None, "mean", owner, BACKGROUND)
                kept = replace(evidence, image=display_image(evidence.image, KEPT_SIDE))
                regions, _maps, _report = compute.gather_regions(self.model, kept, "scorecam", None, FusionParams(),
                                                                 owner, BACKGROUND)
                self.offer(request, model, regions)
                made += 1
            except Exception:
                LOG.exception("could not prepare the example %s", path.name)
            finally:
                compute.SCHEDULER.done(owner)
        return made
