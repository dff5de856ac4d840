"""Ready before the first visitor: load the bundled model and explain the example images in the
background at start-up, so the first visitor pays neither the model load nor the first-run costs
(memory allocation, and on CPU the compiled scoring network's build), and an example is instant."""

from __future__ import annotations

import logging
import threading
import time

from fusioncam.backend import on_zero_gpu
from fusioncam.models import BUNDLED

from .catalog import MODELS
from .handlers import EXAMPLES

LOG = logging.getLogger(__name__)


def warm_up() -> None:
    """Load the bundled model; unless on ZeroGPU (where the network only runs inside a GPU
    worker and nothing of a background run would survive it), explain the example images under the
    default settings at the scheduler's lowest priority and keep them (:mod:`fusioncam.ui.examples`):
    the first run pays the first-run costs, and a click on an example is then instant."""
    started = time.perf_counter()
    try:
        MODELS.get(BUNDLED)
        if not on_zero_gpu():
            made = EXAMPLES.fill()
            LOG.info("%d example explanations kept", made)
    except Exception:   # a failed warm-up must never stop the app: visitors just pay the first run
        LOG.exception("warm-up failed")
        return
    LOG.info("warm-up done in %.1f s", time.perf_counter() - started)


def warm_up_in_background() -> threading.Thread:
    """Start :func:`warm_up` in a daemon thread and return it."""
    thread = threading.Thread(target=warm_up, name="fusioncam-warm-up", daemon=True)
    thread.start()
    return thread
