"""Many requests through the app in one process: memory stays bounded and no hook is left behind.

``FUSIONCAM_SOAK_REQUESTS`` sets the count (default 40, enough for the slope check; 100 by hand:
``FUSIONCAM_SOAK_REQUESTS=100 python -m pytest tests/test_soak.py -m soak -s``). The requests
rotate images, classes and a few sessions; every fifth is a bad upload and every seventh is
cancelled while it runs, so failed and cancelled requests are in the mix. The memory curve
(RSS after each block of 10) is printed for the record.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_images import BAD

client_module = pytest.importorskip("gradio_client")

from fusioncam.models import LoadedModel  # noqa: E402
from fusioncam.ui.catalog import MODELS  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
IMAGES = ("cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "cat_and_coffee.jpg")
CHEAP = {"region_method": "scorecam-topk", "top_k": 16}
REQUESTS = int(os.environ.get("FUSIONCAM_SOAK_REQUESTS", "40"))
# Requests before the first reading. Measured here (2 busy cores): RSS climbs in steps of 75–200 MB over the
# first ~40 requests, as new worker threads of Gradio's pool get their own glibc malloc arena and PyTorch,
# Gradio and plotly fill their caches, then creeps by about 0.3 MB a request.
WARMUP = 20
MAX_GROWTH_MB = 300           # RSS growth allowed from the first reading to the end, whatever the count
MAX_SLOPE_MB = 1.0            # MB a request allowed over the second half of a long run
pytestmark = [pytest.mark.soak, pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")]


def rss_mb() -> float:
    """This process's resident memory in MB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def hook_count(model: LoadedModel) -> int:
    """Forward, forward-pre and backward hooks registered anywhere in the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.module.modules())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import app

    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None,
                    **app.LAUNCH_OPTIONS)
    try:
        yield app.demo.local_url
    finally:
        app.demo.close()


def one_request(sessions: list[Any], index: int, bad_file: Path) -> str:
    """Request ``index``: a bad upload, a cancelled explain, or a normal explain then a re-fusion."""
    session = sessions[index % len(sessions)]
    image = client_module.handle_file(str(ASSETS / IMAGES[index % len(IMAGES)]))
    target = str((index * 37) % 1000)          # a new class each time: the evidence is recomputed
    if index % 5 == 4:
        with pytest.raises(client_module.exceptions.AppError, match="not an image"):
            session.predict(client_module.handle_file(str(bad_file)), **CHEAP, api_name="/explain")
        return "bad"
    if index % 7 == 6:
        job = session.submit(image, target=target, **CHEAP, api_name="/explain")
        time.sleep(0.3)
        job.cancel()
        return "cancelled"
    outputs = session.predict(image, target=target, **CHEAP, api_name="/explain")
    assert outputs[-3]["class_index"] == int(target)
    session.predict(theta=10 + index % 20, strength=1.0 + index % 3, weights="reference", gradient_method="gradcam",
                    colormap="jet", opacity=0.5, api_name="/refuse")
    return "explained"


def test_memory_and_hooks_stay_flat_over_many_requests(server: str, tmp_path: Path) -> None:
    bad_file = tmp_path / "notes.jpg"
    bad_file.write_bytes(BAD["text-as-jpg"][0]())
    sessions = [client_module.Client(server, verbose=False) for _ in range(3)]
    for index in range(WARMUP):
        one_request(sessions, index, bad_file)
    gc.collect()
    curve = [(0, rss_mb())]
    kinds: dict[str, int] = {}
    for index in range(REQUESTS):
        kind = one_request(sessions, WARMUP + index, bad_file)
        kinds[kind] = kinds.get(kind, 0) + 1
        if (index + 1) % 10 == 0 or index + 1 == REQUESTS:
            gc.collect()
            curve.append((index + 1, rss_mb()))
    time.sleep(1)                              # let a cancelled run's last step finish
    models = [MODELS.get(spec) for spec in MODELS.loaded()]
    hooks = sum(hook_count(model) for model in models)
    print(f"\nsoak: {REQUESTS} requests {kinds}, models {MODELS.loaded()}, hooks left {hooks}")
    print("soak RSS (requests → MB): " + ", ".join(f"{n} → {mb:.0f}" for n, mb in curve))
    assert hooks == 0
    assert curve[-1][1] - curve[0][1] < MAX_GROWTH_MB, curve
    assert len(curve) >= 4, f"{REQUESTS} requests are too few to check the slope; run at least 30"
    middle = curve[len(curve) // 2]            # the second half must not keep growing
    assert (curve[-1][1] - middle[1]) / (curve[-1][0] - middle[0]) < MAX_SLOPE_MB, curve
