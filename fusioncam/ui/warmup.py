"""Ready before the first visitor: load the bundled model and explain one example in the background
at start-up, so the first visitor pays neither the model load nor the first-run costs (memory
allocation, and on CPU the compiled scoring network's build)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fusioncam.backend import on_zero_gpu
from fusioncam.explain import explain
from fusioncam.models import BUNDLED

from .catalog import MODELS

WARM_UP_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "cat.jpg"
LOG = logging.getLogger(__name__)


def warm_up() -> None:
    """Load the bundled model; unless on ZeroGPU (where the network only runs inside a GPU
    worker and nothing of a warm-up run would survive it), explain the example image once."""
    started = time.perf_counter()
    try:
        model = MODELS.get(BUNDLED)
        if not on_zero_gpu() and WARM_UP_IMAGE.is_file():
            explain(model, str(WARM_UP_IMAGE))
    except Exception:   # a failed warm-up must never stop the app: visitors just pay the first run
        LOG.exception("warm-up failed")
        return
    LOG.info("warm-up done in %.1f s", time.perf_counter() - started)


def warm_up_in_background() -> threading.Thread:
    """Start :func:`warm_up` in a daemon thread and return it."""
    thread = threading.Thread(target=warm_up, name="fusioncam-warm-up", daemon=True)
    thread.start()
    return thread
