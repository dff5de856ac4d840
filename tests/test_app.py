"""The app in-process: launch the Blocks, call its API with gradio_client, check the UI helpers."""

from __future__ import annotations

import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
client_module = pytest.importorskip("gradio_client")

from fusioncam.explain import MAP_NAMES, capture_evidence  # noqa: E402
from fusioncam.images import load_image  # noqa: E402
from fusioncam.models import BUNDLED  # noqa: E402
from fusioncam.ui import handlers  # noqa: E402
from fusioncam.ui.catalog import MODELS, ModelCache, class_choices, parse_layer, parse_target  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CAT = ASSETS / "cat.jpg"
REFINE_DEFAULTS = {"theta": 10, "strength": 1.0, "weights": "reference", "gradient_method": "gradcam",
                   "colormap": "jet", "opacity": 0.5}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """The app launched in-process on a free port, and one gradio_client session on it."""
    import app

    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None)
    try:
        yield client_module.Client(app.demo.local_url, verbose=False)
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def explained(client: Any) -> dict[str, Any]:
    """One ``/explain`` call on the cat with every other input at its default, outputs by name."""
    model = MODELS.get(BUNDLED)
    before = model.forwarded_images
    result = client.predict(client_module.handle_file(str(CAT)), api_name="/explain")
    outputs = dict(zip(handlers.EXPLAIN_OUTPUTS[1:], result, strict=True))
    outputs["forwarded"] = model.forwarded_images - before
    return outputs


def overlay(outputs: dict[str, Any], name: str) -> np.ndarray:
    """A static map's overlay an API call returned, as an array (it must be a PNG)."""
    with Image.open(outputs[f"map-{name}"]) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB")).astype(np.int16)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels (no pixel data: nothing big is allocated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.slow
def test_explain_endpoint_reports_the_top1_class(explained: dict[str, Any]) -> None:
    model = MODELS.get(BUNDLED)
    [evidence] = capture_evidence(model, [load_image(CAT)])
    report = explained["report"]
    assert report["class_index"] == int(evidence.logits.argmax()) == evidence.target
    assert report["class_name"] == model.class_names[report["class_index"]]
    assert set(report) >= {"betas", "gammas", "warnings", "timings", "top5"}
    assert report["forward_passes"]["masked"] > 100          # a real Score-CAM ran
    assert explained["forwarded"] >= report["forward_passes"]["total"]
    for name in MAP_NAMES:
        if name in handlers.LIVE_MAPS:        # the page draws these itself, from the two kept maps
            payload = explained[f"map-{name}"]
            assert payload["width"] == payload["height"] == 224 and payload["l1"] and payload["l2"]
        else:
            overlay(explained, name)
    assert report["class_name"] in explained["summary"].splitlines()[0]


@pytest.mark.slow
def test_refuse_changes_the_fused_map_without_score_cam(client: Any, explained: dict[str, Any]) -> None:
    model = MODELS.get(BUNDLED)
    before = model.forwarded_images
    result = client.predict(**dict(REFINE_DEFAULTS, strength=4.0), api_name="/refuse")
    outputs = dict(zip(handlers.REFINE_OUTPUTS[1:], result, strict=True))
    assert model.forwarded_images == before                  # a new λ runs no network at all
    assert outputs["report"]["params"]["strength"] == 4.0
    assert outputs["map-fusion"]["strength"] == 4.0 and outputs["map-fusion"]["l1"] == explained["map-fusion"]["l1"]

    before = model.forwarded_images
    result = client.predict(**dict(REFINE_DEFAULTS, theta=30), api_name="/refuse")
    outputs = dict(zip(handlers.REFINE_OUTPUTS[1:], result, strict=True))
    assert model.forwarded_images - before <= 2              # a new θ: denoised + combined scoring only
    assert outputs["report"]["denoise"]["theta"] == 30
    assert outputs["report"]["forward_passes"]["masked"] == explained["report"]["forward_passes"]["masked"]


@pytest.mark.slow
def test_export_zip_holds_maps_overlays_and_report(client: Any, explained: dict[str, Any]) -> None:
    path = client.predict(api_name="/export")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    assert names == {f"{n}.npy" for n in MAP_NAMES} | {f"{n}.png" for n in MAP_NAMES} | {"report.json"}


@pytest.mark.slow
def test_report_download_is_one_self_contained_html_file(client: Any, explained: dict[str, Any]) -> None:
    page = Path(client.predict(api_name="/report")).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") or page.lower().startswith("<!doctype html>")
    assert explained["report"]["class_name"] in page and page.count("data:image/") >= 7
    assert "<script src=" not in page and "http://" not in page.split("</style>")[0]


@pytest.mark.slow
@pytest.mark.parametrize(("make", "message"), [
    (lambda d: None, "upload an image"),
    (lambda d: d.joinpath("notes.png").write_text("not an image") and d / "notes.png", "not an image format"),
    (lambda d: Image.new("RGB", (1, 1)).save(d / "dot.png") or d / "dot.png", "only 1×1 px"),
    (lambda d: d.joinpath("huge.png").write_bytes(png_header_only(20000, 20000)) and d / "huge.png", "megapixel limit"),
])
def test_bad_images_get_a_plain_message_and_the_app_keeps_serving(client: Any, explained: dict[str, Any],
                                                                    tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)
    image = None if path is None else client_module.handle_file(str(path))
    with pytest.raises(client_module.exceptions.AppError, match=message):
        client.predict(image, api_name="/explain")
    result = client.predict(**dict(REFINE_DEFAULTS, opacity=0.6), api_name="/refuse")
    assert dict(zip(handlers.REFINE_OUTPUTS[1:], result, strict=True))["report"]["class_index"] == \
        explained["report"]["class_index"]
    client.predict(**REFINE_DEFAULTS, api_name="/refuse")


@pytest.mark.slow
def test_unknown_class_is_refused_plainly(client: Any, explained: dict[str, Any]) -> None:
    with pytest.raises(client_module.exceptions.AppError, match="Unknown class 'unicorn'"):
        client.predict(client_module.handle_file(str(CAT)), target="unicorn", api_name="/explain")


def test_sessions_do_not_share_state(client: Any) -> None:
    other = client_module.Client(client.src, verbose=False)
    result = other.predict(**REFINE_DEFAULTS, api_name="/refuse")   # nothing explained in this session
    assert all(not isinstance(value, dict) or "class_index" not in value for value in result)


def test_parse_target_accepts_indices_labels_and_names() -> None:
    names = ["tench", "goldfish", "great white shark"]
    assert parse_target(None, names) is None
    assert parse_target("top", names) is None
    assert parse_target("2", names) == 2
    assert parse_target(1, names) == 1
    assert parse_target("1: goldfish — 3.0%", names) == 1
    assert parse_target("Great White Shark", names) == 2
    with pytest.raises(ValueError, match="Unknown class"):
        parse_target("unicorn", names)
    with pytest.raises(ValueError, match="does not exist"):
        parse_target("7", names)
    assert parse_layer("default") is None
    assert parse_layer(" bn2 ") == "bn2"


def test_class_choices_put_the_top5_first_without_duplicates() -> None:
    names = [f"class{i}" for i in range(10)]
    top5 = [{"index": i, "name": names[i], "probability": p} for i, p in ((7, 0.5), (3, 0.2))]
    choices = class_choices(names, top5)
    values = [value for _, value in choices]
    assert values[:3] == ["top", "7", "3"] and len(values) == len(set(values)) == 11
    assert "50.0%" in choices[1][0]


def test_model_cache_is_bounded_and_loads_each_model_once() -> None:
    loads: list[str] = []
    started = threading.Event()

    def loader(spec: str) -> Any:
        started.wait(1)
        loads.append(spec)
        return object()

    cache = ModelCache(capacity=2, loader=loader)
    threads = [threading.Thread(target=cache.get, args=("a",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.set()
    for thread in threads:
        thread.join()
    assert loads == ["a"]
    first = cache.get("a")
    cache.get("b")
    cache.get("a")
    cache.get("c")                     # evicts b, the least recently used
    assert cache.loaded() == ["a", "c"] and cache.get("a") is first
    cache.get("b")
    assert loads == ["a", "b", "c", "b"]
