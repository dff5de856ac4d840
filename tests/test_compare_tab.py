"""The Compare tab: ``/compare`` through gradio_client, the model cache holding both sides' models,
and the real page in Chromium (both sides, one λ, the difference, a shared comparison reopened)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
client_module = pytest.importorskip("gradio_client")

from test_browser import SLOW_MS, app_in_chromium  # noqa: E402

from fusioncam.compare import RECORD_KEYS  # noqa: E402
from fusioncam.models import BUNDLED  # noqa: E402
from fusioncam.ui.catalog import DEFAULT_LAYER, MODELS, TOP_CLASS, ModelCache  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAT = ROOT / "assets" / "cat.jpg"


def plain(message: str) -> None:
    """One plain sentence: one line, no traceback or exception class."""
    assert "\n" not in message and "Traceback" not in message and "Error:" not in message, message


# --- the model cache: both sides' models held for a whole run ----------------------------------------------------

def test_a_held_model_is_never_evicted_and_a_third_waits_for_a_free_slot() -> None:
    loads: list[str] = []
    cache = ModelCache(capacity=2, loader=lambda spec: loads.append(spec) or object())
    release, entered = threading.Event(), threading.Event()

    def run_holding_both() -> None:
        with cache.using("a", "b"):
            models = cache.get("a"), cache.get("b")
            entered.set()
            release.wait(30)
            assert cache.get("a") is models[0] and cache.get("b") is models[1]   # still the same, mid-run

    holder = threading.Thread(target=run_holding_both)
    holder.start()
    assert entered.wait(30)
    assert cache.must_wait("c") and not cache.must_wait("a")
    third = threading.Thread(target=cache.get, args=("c",))
    third.start()
    while cache.waiting() != 1:                 # the request for c waits: both slots are in use
        threading.Event().wait(0.01)
    assert cache.loaded() == ["a", "b"] and "c" not in loads
    release.set()
    holder.join(30)
    third.join(30)
    assert cache.loaded() == ["b", "c"] and cache.held() == []         # a, the least recently used, made room
    with cache.using("b", "d"):                                         # d fits beside b: c (not held) goes
        assert cache.get("d") is not None and cache.loaded() == ["b", "d"]
    with pytest.raises(ValueError, match="at most 2 models"), cache.using("x", "y", "z"):
        pass


def test_an_unheld_model_is_evicted_least_recently_used_first() -> None:
    cache = ModelCache(capacity=2, loader=lambda spec: object())
    with cache.using("a"):
        cache.get("a")
        cache.get("b")
        cache.get("c")                          # b goes, not a (held, though used longer ago)
        assert cache.loaded() == ["a", "c"]


# --- /compare through gradio_client ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import app

    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None,
                    **app.LAUNCH_OPTIONS)
    try:
        yield client_module.Client(app.demo.local_url, verbose=False)
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def compared(client: Any) -> tuple[dict, dict, dict]:
    """One ``/compare`` of the cat with every other input at its default."""
    result = client.predict(client_module.handle_file(str(CAT)), api_name="/compare")
    assert len(result) == 3
    return tuple(result)


@pytest.mark.slow
def test_compare_defaults_to_the_top_two_classes_of_the_bundled_model(compared: tuple[dict, dict, dict]) -> None:
    report_a, report_b, record = compared
    assert report_a["model"] == report_b["model"] == BUNDLED
    order = [entry["index"] for entry in report_a["top5"]]
    assert (report_a["class_index"], report_b["class_index"]) == (order[0], order[1])
    assert {"betas", "gammas"} <= set(report_a) and {"betas", "gammas"} <= set(report_b)
    assert list(record) == list(RECORD_KEYS) and record["shared_region"] == 1.0
    assert -1 <= record["spearman"] <= 1 and 0 <= record["iou_top20"] <= 1
    from fusioncam.ui.compute import SCHEDULER
    assert SCHEDULER.requests() == 0     # the finished comparison no longer counts as a request sharing the network


@pytest.mark.slow
def test_partial_updates_send_cheap_previews_and_the_exact_side_its_pngs_and_chart(tmp_path: Path) -> None:
    from fusioncam.ui import compare_handlers as handlers

    upload = tmp_path / "mirrored-cat.png"        # a fresh image: both sides compute Score-CAM now
    Image.open(CAT).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(upload)
    updates = [dict(zip(handlers.PAGE_OUTPUTS, values, strict=True)) for values in handlers.compare_page(
        str(upload), BUNDLED, BUNDLED, TOP_CLASS, TOP_CLASS, DEFAULT_LAYER, DEFAULT_LAYER, 10, 1.0, "reference", None)]
    sent = [(u["report-a"]["progress"]["final"], u) for u in updates if "progress" in (u["report-a"] or {})]
    partial = [u for final, u in sent if not final]
    assert partial, "side A sent no anytime update"
    for update in partial:                         # a JPEG preview and the live card; nothing else redrawn
        assert Path(update["scorecam-a"]).suffix == ".jpg"
        assert all(update[f"{kind}-a"] == gr.skip() for kind in ("gradcam", "top5", "weights"))
    final = next(u for done, u in sent if done)
    assert isinstance(final["scorecam-a"], np.ndarray) and final["weights-a"] is not None


@pytest.mark.slow
def test_a_change_on_one_side_recomputes_that_side_only(client: Any, compared: tuple[dict, dict, dict]) -> None:
    model = MODELS.get(BUNDLED)
    before = model.forwarded_images
    report_a, report_b, record = client.predict(client_module.handle_file(str(CAT)), class_b="281",
                                                strength=2.5, api_name="/compare")
    kept = ("gradient_s", "scorecam_s")                                 # side A was kept, only re-fused
    assert [report_a["timings"][k] for k in kept] == [compared[0]["timings"][k] for k in kept]
    assert report_a["params"]["strength"] == report_b["params"]["strength"] == 2.5
    assert report_b["class_index"] == 281
    # B's Score-CAM (plus a few scoring passes: anytime updates, the comparison), not A's too
    one_more = report_b["forward_passes"]["total"] + report_a["forward_passes"]["masked"] / 2
    assert model.forwarded_images - before < one_more
    assert record != compared[2]


@pytest.mark.slow
def test_two_models_are_compared_on_the_part_of_the_image_both_saw(client: Any) -> None:
    _report_a, report_b, record = client.predict(client_module.handle_file(str(CAT)), model_b="efficientnet_lite1",
                                                api_name="/compare")
    assert report_b["model"] == "efficientnet_lite1"
    assert report_b["class_index"] == report_b["top5"][0]["index"]     # B's own top-1 once the models differ
    assert 0.5 < record["shared_region"] < 1.0                          # Lite1 crops the centre; Lite0 sees it all


@pytest.mark.slow
@pytest.mark.parametrize(("options", "side", "message"), [
    ({"class_b": "unicorn"}, "side B", "Unknown class 'unicorn'"),
    ({"class_a": "1000"}, "side A", "does not exist"),
    ({"layer_a": "blocks.99"}, "side A", "has no layer named 'blocks.99'"),
    ({"layer_b": "__class__"}, "side B", "not a layer name"),
    ({"model_b": "timm:$(reboot)"}, "side B", "Unknown model"),
])
def test_bad_input_names_its_side_in_one_sentence(client: Any, compared: tuple, options: dict, side: str,
                                                  message: str) -> None:
    with pytest.raises(client_module.exceptions.AppError, match=message) as error:
        client.predict(client_module.handle_file(str(CAT)), **options, api_name="/compare")
    plain(str(error.value))
    assert str(error.value).startswith(side)


@pytest.mark.slow
def test_an_image_that_fails_to_load_names_both_sides(client: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(client_module.exceptions.AppError, match="side A and side B") as error:
        client.predict(client_module.handle_file(str(broken)), api_name="/compare")
    plain(str(error.value))


@pytest.mark.slow
def test_on_a_space_the_compare_tab_obeys_the_model_allow_list(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPACE_ID", "owner/fusioncam")
    monkeypatch.setenv("FUSIONCAM_MODELS", BUNDLED)
    with pytest.raises(client_module.exceptions.AppError, match="side B: This Space offers only"):
        client.predict(client_module.handle_file(str(CAT)), model_b="timm:resnet18", api_name="/compare")


# --- the real page ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> Iterator[tuple[Any, str]]:
    """Headless Chromium and the app's URL (launched in-process)."""
    with app_in_chromium() as launched:
        yield launched


def card(side: str) -> str:
    return f"document.querySelector('#compare-fusion-{side} .fc-live').dataset"


def wait_for_comparison(page: Any) -> None:
    """Both sides' exact maps drawn and the numbers shown."""
    page.wait_for_function("""() => ['a', 'b'].every(s => {
        const d = document.querySelector(`#compare-fusion-${s} .fc-live`)?.dataset;
        return d && d.state === 'drawn' && d.progress === 'final'; })
        && (document.querySelector('#compare-numbers')?.innerText || '').includes('Rank correlation')""",
                           timeout=SLOW_MS)


@pytest.mark.browser
@pytest.mark.slow
def test_compare_tab_draws_both_sides_follows_one_lambda_and_shares(chromium: tuple[Any, str]) -> None:
    browser, url = chromium
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-image input[type=file]").set_input_files(str(CAT))
    wait_for_comparison(page)
    assert page.locator("#compare-difference img").count() == 1
    assert page.locator("#compare-gradcam-b img").count() == page.locator("#compare-scorecam-a img").count() == 1
    status = page.locator("#compare-status").inner_text()
    assert "A: Egyptian cat" in status and "B: tiger cat" in status

    before = [page.evaluate(f"({card(s)}).paints") for s in "ab"]
    strength = page.locator("#compare-strength input[type=number]")
    strength.fill("3.5")
    strength.press("Enter")
    for side, paints in zip("ab", before, strict=True):            # one λ repaints both sides in the page
        page.wait_for_function(f"() => ({card(side)}).strength === '3.5' && ({card(side)}).paints !== '{paints}'",
                               timeout=SLOW_MS)
    page.wait_for_function("() => document.querySelector('#compare-status').innerText.includes('λ = 3.5')",
                           timeout=SLOW_MS)                        # the server learnt λ and compared again
    page.screenshot(path="/tmp/fusioncam-compare.png", full_page=True)
    page.locator("#compare-tab").screenshot(path="/tmp/fusioncam-compare-tab.png")   # docs/compare.png is cut from it

    page.locator("#compare-share").click()
    page.wait_for_function("() => document.querySelector('#compare-share-url textarea, #compare-share-url input')"
                           ".value.includes('?share=')", timeout=SLOW_MS)
    link = page.locator("#compare-share-url textarea, #compare-share-url input").first.input_value()
    visitor = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    visitor.goto(link)
    wait_for_comparison(visitor)                                    # the Compare tab, both sides, the numbers
    assert visitor.locator("#compare-strength input[type=number]").input_value() == "3.5"
    assert visitor.evaluate(f"({card('b')}).strength") == "3.5"
    assert "kept until" in visitor.locator("#compare-share-note").inner_text()
    assert visitor.locator("#compare-status").inner_text() == page.locator("#compare-status").inner_text()
    visitor.screenshot(path="/tmp/fusioncam-compare-shared.png", full_page=True)
