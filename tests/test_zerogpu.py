"""The app's whole flow under a ZeroGPU stand-in that forks a worker per GPU call and pickles its
arguments and results as ``spaces`` does (``tests/zerogpu/spaces``): explain, λ and θ re-fusion,
faithfulness, export, and a quota failure — driven with ``gradio_client`` against ``app.py``
running in its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

client_module = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "zerogpu"
ASSETS = ROOT / "assets"
EXPLAIN_OUTPUTS = ("summary", "top5", "map-gradcam", "map-denoised", "map-scorecam", "map-combined", "map-fusion",
                   "map-agreement", "weights", "hover", "report", "target-class", "layer")
REFINE = {"theta": 10, "strength": 1.0, "weights": "reference", "gradient_method": "gradcam", "colormap": "jet",
          "opacity": 0.5}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def zerogpu_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``app.py`` in a subprocess that imports the stand-in as ``spaces``; its URL and hook files."""
    folder = tmp_path_factory.mktemp("zerogpu")
    log, quota = folder / "gpu-calls.log", folder / "quota-exhausted"
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN), str(ROOT)]),
               FUSIONCAM_TEST_ZEROGPU_LOG=str(log), FUSIONCAM_TEST_ZEROGPU_QUOTA=str(quota),
               SPACES_ZERO_GPU="true", GRADIO_ANALYTICS_ENABLED="False")
    code = (f"import spaces, app; assert spaces.__file__.startswith({str(STANDIN)!r}); "
            f"app.demo.launch(server_name='127.0.0.1', server_port={port}, **app.LAUNCH_OPTIONS)")
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"the app exited early:\n{server.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start within 180 s")
        yield {"url": url, "log": log, "quota": quota, "server": server}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.slow
def test_whole_flow_through_forked_pickling_gpu_workers(zerogpu_app: dict[str, Any]) -> None:
    client = client_module.Client(zerogpu_app["url"], verbose=False)
    log = zerogpu_app["log"]

    result = client.predict(client_module.handle_file(str(ASSETS / "cat.jpg")), api_name="/explain")
    outputs = dict(zip(EXPLAIN_OUTPUTS, result, strict=True))
    report = outputs["report"]
    assert report["class_name"] in outputs["summary"].splitlines()[0]
    assert report["forward_passes"]["masked"] > 100                      # Score-CAM ran in a worker
    assert _calls(log) == ["gather_gradients", "stream_regions"]            # Score-CAM streamed out of one worker

    calls = len(_calls(log))
    result = client.predict(**dict(REFINE, strength=3.0), api_name="/refuse")
    assert result[-1]["params"]["strength"] == 3.0
    result = client.predict(**dict(REFINE, strength=3.0, weights="normalized"), api_name="/refuse")
    assert result[-1]["params"]["weights"] == "normalized"
    assert len(_calls(log)) == calls                                      # λ and this weight mode: no GPU

    result = client.predict(**dict(REFINE, strength=3.0, theta=30), api_name="/refuse")
    assert result[-1]["denoise"]["theta"] == 30
    assert _calls(log)[calls:] == ["_refuse_with_network"]                # θ: one GPU call

    status, table, _deletion, _insertion = client.predict(16, [], api_name="/faithfulness")
    assert report["class_name"] in status
    assert len(table["data"]) >= 5                                        # one row per scored map
    assert _calls(log)[-1] == "faithfulness"

    with zipfile.ZipFile(client.predict(api_name="/export")) as archive:
        assert "report.json" in archive.namelist()


@pytest.mark.slow
def test_an_exhausted_quota_is_one_plain_sentence(zerogpu_app: dict[str, Any]) -> None:
    client = client_module.Client(zerogpu_app["url"], verbose=False)
    zerogpu_app["quota"].touch()
    try:
        with pytest.raises(client_module.exceptions.AppError, match="exceeded your GPU quota"):
            client.predict(client_module.handle_file(str(ASSETS / "coffee.jpg")), api_name="/explain")
    finally:
        zerogpu_app["quota"].unlink()
    result = client.predict(client_module.handle_file(str(ASSETS / "coffee.jpg")), api_name="/explain")
    assert result[-3]["class_name"]                                        # and the app keeps serving
