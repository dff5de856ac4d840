"""Anytime Score-CAM through the app: /explain streams the Grad-CAM map, then partial Score-CAM
pictures with their progress, then the exact explanation; examples come from the kept copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

client_module = pytest.importorskip("gradio_client")

from fusioncam.explain import explain  # noqa: E402
from fusioncam.models import BUNDLED  # noqa: E402
from fusioncam.ui import handlers  # noqa: E402
from fusioncam.ui.catalog import MODELS  # noqa: E402
from fusioncam.ui.examples import default_request  # noqa: E402
from fusioncam.ui.session import file_digest  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
OUTPUTS = handlers.EXPLAIN_OUTPUTS[1:]   # the API leaves out the session state
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import app

    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None)
    try:
        yield client_module.Client(app.demo.local_url, verbose=False)
    finally:
        app.demo.close()


def picture(value: Any) -> Any:
    """An image output's file (or ``None``), whether sent plainly or inside an update (with a caption)."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        return value.get("value")
    return value


def test_explain_streams_partial_score_cam_then_the_exact_map(client: Any, tmp_path: Path) -> None:
    upload = tmp_path / "mirrored-cat.png"        # not an example: nothing kept, computed now
    Image.open(ASSETS / "cat.jpg").convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(upload)
    job = client.submit(client_module.handle_file(str(upload)), api_name="/explain")
    job.result(timeout=600)
    updates = [dict(zip(OUTPUTS, values, strict=True)) for values in job.outputs()]
    reports = [u["report"] for u in updates if isinstance(u["report"], dict) and "progress" in u["report"]]
    partial = [r for r in reports if not r["progress"]["final"]]
    assert picture(updates[0]["map-gradcam"]) and not picture(updates[0]["map-scorecam"])   # Grad-CAM first, alone
    assert len(partial) >= 2, f"only {len(partial)} partial updates"
    fractions = [r["progress"]["scorecam_fraction"] for r in partial]
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
    assert reports[-1]["progress"] == {"scorecam_fraction": 1.0, "final": True}
    scorecam_pictures = {str(picture(u["map-scorecam"])) for u in updates if picture(u["map-scorecam"])}
    assert len(scorecam_pictures) >= 3          # two partial pictures at least, then the final one
    # Previews (the first Grad-CAM overlay, the partial maps) travel as JPEG, the exact maps as PNG.
    partial_pictures = [picture(u["map-scorecam"]) for u in updates[:-1] if picture(u["map-scorecam"])]
    assert all(Path(p).suffix == ".jpg" for p in [picture(updates[0]["map-gradcam"]), *partial_pictures])
    assert all(Path(picture(updates[-1][f"map-{n}"])).suffix == ".png" for n in ("gradcam", "scorecam", "combined"))

    model = MODELS.get(BUNDLED)
    exact = explain(model, str(upload))
    assert reports[-1]["betas"] == pytest.approx(exact.report["betas"], abs=1e-5)
    assert reports[-1]["gammas"] == pytest.approx(exact.report["gammas"], abs=1e-5)


def test_an_example_is_kept_once_explained_and_then_comes_without_score_cam(client: Any) -> None:
    example = ASSETS / "rocket.jpg"
    model = MODELS.get(BUNDLED)
    request = default_request(file_digest(example), BUNDLED)
    first = client.predict(client_module.handle_file(str(example)), api_name="/explain")
    assert handlers.EXAMPLES.get(request, model) is not None
    before = model.forwarded_images
    second = dict(zip(OUTPUTS, client.predict(client_module.handle_file(str(example)), theta=20,
                                              api_name="/explain"), strict=True))
    assert model.forwarded_images - before <= 2           # θ = 20: two scoring forwards, no Score-CAM
    assert second["report"]["progress"]["final"] and second["report"]["params"]["theta"] == 20
    assert dict(zip(OUTPUTS, first, strict=True))["report"]["class_index"] == second["report"]["class_index"]
    expected = explain(model, str(example), theta=20)
    assert second["report"]["betas"] == pytest.approx(expected.report["betas"], abs=1e-5)


def test_a_preview_is_a_jpeg_in_gradios_cache_one_file_per_picture() -> None:
    from gradio.utils import get_upload_folder

    from fusioncam.ui.previews import preview_file

    drawn = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = Path(preview_file(drawn))
    assert path.is_relative_to(Path(get_upload_folder()).resolve()) and path.suffix == ".jpg"
    assert preview_file(drawn.copy()) == str(path)          # content-addressed: the same picture, one file
    with Image.open(path) as shown:
        assert shown.format == "JPEG" and shown.size == (64, 48)


def test_only_examples_under_default_settings_are_kept(tmp_path: Path) -> None:
    model = MODELS.get(BUNDLED)
    cache = handlers.EXAMPLES
    example = default_request(file_digest(ASSETS / "coffee.jpg"), BUNDLED)
    assert cache.cacheable(example)
    upload = tmp_path / "own.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(upload)
    assert not cache.cacheable(default_request(file_digest(upload), BUNDLED))      # a visitor's own image
    assert not cache.cacheable(example.__class__(**{**example.__dict__, "target": 5}))   # another class
    assert not cache.cacheable(example.__class__(**{**example.__dict__, "model": "efficientnet_lite1"}))
    exp = explain(model, str(ASSETS / "coffee.jpg"))
    cache.offer(example, model, exp.evidence)
    assert cache.get(example, model) is not None
    first_weight = next(model.module.parameters())
    original = first_weight.detach().clone()
    try:
        with torch.no_grad():
            first_weight.add_(1.0)                       # the weights changed: the kept copy is not trusted
        assert cache.get(example, model) is None
    finally:
        with torch.no_grad():
            first_weight.copy_(original)
