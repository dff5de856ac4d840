"""The app under hostile or unlucky use, through gradio_client: bad files, hostile model and layer
names, many clients at once, a full queue. Each case gives a result or one plain sentence, and
the app answers a normal request afterwards.

Explanations here use the cheap path (``scorecam-topk`` with 16 channels): these tests are about
the app, not about Score-CAM.
"""

from __future__ import annotations

import base64
import builtins
import itertools
import os
import pickle
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_images import BAD, GOOD

gr = pytest.importorskip("gradio")
client_module = pytest.importorskip("gradio_client")

from fusioncam.images import InputError, load_image  # noqa: E402
from fusioncam.models import BUNDLED, ModelError  # noqa: E402
from fusioncam.ui import handlers  # noqa: E402
from fusioncam.ui.catalog import MODELS, parse_layer, parse_model  # noqa: E402
from fusioncam.ui.inputs import undecoded_upload  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CHEAP = {"region_method": "scorecam-topk", "top_k": 16}
REFINE = {"theta": 10, "strength": 1.0, "weights": "reference", "gradient_method": "gradcam", "colormap": "jet"}
HOSTILE_MODELS = ["__import__('os').system('x')", "../../etc/passwd", "timm:resnet18; rm -rf /",
                  "torchvision:../../etc/passwd", "timm:$(reboot)", "x" * 5000]
HOSTILE_LAYERS = ["__import__('os').system('x')", "../../etc/passwd", "blocks.0.__class__", "bn2; rm -rf /",
                  "blocks.0.0.__dict__", "_modules", "y" * 5000]
OPACITIES = itertools.cycle([0.3, 0.4, 0.6, 0.7, 0.8])
pytestmark = pytest.mark.slow


def launch(demo: Any) -> Any:
    """Launch ``demo`` in-process on a free port with the app's real launch options."""
    import app

    demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None,
                **app.LAUNCH_OPTIONS)
    return demo


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The app's URL, launched in-process for this module."""
    import app

    launch(app.demo)
    try:
        yield app.demo.local_url
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    """One session that has explained the cat (so ``/refuse`` has something to re-fuse)."""
    session = client_module.Client(server, verbose=False)
    session.predict(client_module.handle_file(str(ASSETS / "cat.jpg")), **CHEAP, api_name="/explain")
    return session


def explain(session: Any, path: Path, **options: Any) -> dict[str, Any]:
    """One ``/explain`` call (cheap path unless overridden), its outputs by name."""
    result = session.predict(client_module.handle_file(str(path)), **{**CHEAP, **options}, api_name="/explain")
    return dict(zip(handlers.EXPLAIN_OUTPUTS[1:], result, strict=True))


def still_serving(session: Any) -> None:
    """A normal request right after a bad one: a redraw of the session's explanation answers (each
    call with a new opacity, so that there is something to send back)."""
    result = session.predict(**REFINE, opacity=next(OPACITIES), api_name="/refuse")
    report = dict(zip(handlers.REFINE_OUTPUTS[1:], result, strict=True))["report"]
    assert report["class_name"] and report["params"]["region_method"] == "scorecam-topk"


def plain(message: str) -> None:
    """One plain sentence: one line, no traceback or exception class, not a wall of text."""
    assert "\n" not in message and "Traceback" not in message and "Error:" not in message, message
    assert 0 < len(message) < 300, message


def kept_map(payload: dict[str, Any], name: str) -> np.ndarray:
    """``L1`` or ``L2`` of a live-card payload (row-major float32, base64)."""
    values = np.frombuffer(base64.b64decode(payload[name]), dtype="<f4")
    return values.reshape(payload["height"], payload["width"])


def overlay(path: str) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.mark.parametrize("case", list(GOOD))
def test_odd_but_legal_uploads_explain(client: Any, tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.img"
    path.write_bytes(GOOD[case]())
    outputs = explain(client, path)
    assert 0 <= outputs["report"]["class_index"] < 1000
    shown = overlay(outputs["map-scorecam"])
    width, height = load_image(path).size
    assert shown.ndim == 3 and abs(shown.shape[1] / shown.shape[0] - width / height) < 0.05


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_get_one_plain_sentence(client: Any, tmp_path: Path, case: str) -> None:
    maker, message = BAD[case]
    path = tmp_path / "upload.jpg"
    path.write_bytes(maker())
    with pytest.raises(client_module.exceptions.AppError, match=message) as error:
        explain(client, path)
    plain(str(error.value))
    still_serving(client)


@pytest.mark.parametrize(("name", "data", "message"), [
    ("drawing.svg", BAD["svg"][0], "not an image"),
    ("bomb-gray.png", BAD["49-megapixels"][0], "megapixel"),
])
def test_files_gradio_itself_would_open_reach_the_validator(client: Any, tmp_path: Path, name: str,
                                                            data: Callable[[], bytes], message: str) -> None:
    path = tmp_path / name
    path.write_bytes(data())
    with pytest.raises(client_module.exceptions.AppError, match=message) as error:
        explain(client, path)
    plain(str(error.value))
    still_serving(client)


def test_no_image_and_too_big_uploads_are_refused_plainly(client: Any, tmp_path: Path) -> None:
    with pytest.raises(client_module.exceptions.AppError, match="upload an image") as error:
        client.predict(None, **CHEAP, api_name="/explain")
    plain(str(error.value))
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(26 * 1024 * 1024))        # over the 25 MB set in launch
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        explain(client, big)
    still_serving(client)


def test_inline_data_urls_are_validated_by_the_library_not_decoded_by_gradio(tmp_path: Path) -> None:
    component = undecoded_upload(gr.Image(type="filepath"))
    bomb = base64.b64encode(BAD["decompression-bomb"][0]()).decode("ascii")
    path = component.preprocess(gr.FileData(path="", url=f"data:image/png;base64,{bomb}"))
    with pytest.raises(InputError, match="megapixel"):
        load_image(path)
    with pytest.raises(gr.Error, match="not valid base64"):
        component.preprocess(gr.FileData(path="", url="data:image/png;base64,abc"))
    with pytest.raises(InputError, match="empty"):
        load_image(component.preprocess(gr.FileData(path="", url="data:image/png;base64,%%%")))


@pytest.mark.parametrize("spec", HOSTILE_MODELS)
def test_hostile_model_names_are_refused_plainly(client: Any, spec: str) -> None:
    loaded = MODELS.loaded()
    with pytest.raises(client_module.exceptions.AppError, match=r"Unknown model|has no") as error:
        explain(client, ASSETS / "cat.jpg", model_spec=spec)
    plain(str(error.value))
    assert MODELS.loaded() == loaded and MODELS.pending() == 0    # nothing cached, no loading lock left
    still_serving(client)


@pytest.mark.parametrize("layer", [*HOSTILE_LAYERS, "classifier", "blocks.99"])
def test_hostile_or_wrong_layers_are_refused_plainly(client: Any, layer: str) -> None:
    with pytest.raises(client_module.exceptions.AppError, match="layer") as error:
        explain(client, ASSETS / "cat.jpg", layer=layer)
    plain(str(error.value))
    still_serving(client)


def test_user_text_never_reaches_eval_exec_pickle_or_a_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def forbidden(name: str) -> Callable[..., Any]:
        def record(*_args: Any, **_kwargs: Any) -> None:
            calls.append(name)
            raise AssertionError(f"{name} called")
        return record

    for owner, name in ((builtins, "eval"), (builtins, "exec"), (os, "system"), (os, "popen"),
                        (subprocess, "Popen"), (pickle, "loads"), (pickle, "load")):
        monkeypatch.setattr(owner, name, forbidden(f"{owner.__name__}.{name}"))
    for spec in HOSTILE_MODELS:
        with pytest.raises(ModelError):
            MODELS.get(parse_model(spec))
    model = MODELS.get(BUNDLED)
    for layer in HOSTILE_LAYERS:
        with pytest.raises(ModelError):
            model.resolve_layer(parse_layer(layer))
    assert calls == []


def run_alone_and_together(server: str, requests: list[tuple[Path, str]]) -> None:
    """Each request in its own session, first one after another, then all at once: same answers."""
    def run(request: tuple[Path, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        session = client_module.Client(server, verbose=False)
        path, target = request
        outputs = explain(session, path, target=target)
        refused = session.predict(**REFINE, opacity=0.6, api_name="/refuse")   # redrawn from its own evidence
        return outputs, dict(zip(handlers.REFINE_OUTPUTS[1:], refused, strict=True))

    alone = [run(request) for request in requests]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = list(pool.map(run, requests))
    for (path, target), (single, _), (shared, shared_refine) in zip(requests, alone, together, strict=True):
        report = shared["report"]
        assert report["class_index"] == int(target), path
        assert shared_refine["report"]["class_index"] == int(target), path       # no other session's result
        assert report["probability"] == pytest.approx(single["report"]["probability"], abs=1e-6)
        for key in ("denoised", "region", "combined"):
            assert report["betas"][key] == pytest.approx(single["report"]["betas"][key], abs=1e-6), (path, key)
        for name in ("map-gradcam", "map-scorecam", "map-combined"):
            difference = np.abs(overlay(shared[name]).astype(int) - overlay(single[name]).astype(int)).max()
            assert difference <= 1, (path, name)
        for kept in ("l1", "l2"):                  # what the page fuses the live cards from
            np.testing.assert_allclose(kept_map(shared["map-fusion"], kept), kept_map(single["map-fusion"], kept),
                                       atol=1e-5, err_msg=f"{path} {kept}")


def test_four_clients_at_once_get_what_they_would_get_alone(server: str) -> None:
    requests = [(ASSETS / "cat.jpg", "281"), (ASSETS / "coffee.jpg", "967"), (ASSETS / "rocket.jpg", "812"),
                (ASSETS / "astronaut.jpg", "834")]
    run_alone_and_together(server, requests)
    model = MODELS.get(BUNDLED)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.module.modules())


def test_a_full_queue_refuses_with_a_busy_message() -> None:
    import app

    demo = launch(app.build_demo(queue_size=1))
    outcomes: list[str] = []
    lock = threading.Lock()

    def visit() -> None:
        session = client_module.Client(demo.local_url, verbose=False)
        try:
            explain(session, ASSETS / "cat.jpg")
            outcome = "answered"
        except client_module.utils.QueueError as error:   # the page says "currently busy"
            outcome = str(error)
        with lock:
            outcomes.append(outcome)

    try:
        threads = [threading.Thread(target=visit) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert "answered" in outcomes
        assert any("Queue is full" in outcome for outcome in outcomes), outcomes
        assert explain(client_module.Client(demo.local_url, verbose=False), ASSETS / "cat.jpg")["report"]
    finally:
        demo.close()
