"""The real page in Debian's headless Chromium: upload, run, tune λ, switch the class."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
CAT = Path(__file__).resolve().parent.parent / "assets" / "cat.jpg"
COFFEE = Path(__file__).resolve().parent.parent / "assets" / "coffee.jpg"
MAPS = ("gradcam", "denoised", "scorecam", "combined", "fusion", "agreement")
SLOW_MS = 240_000   # a full Score-CAM on a busy 2-core CPU

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed at /usr/bin/chromium"),
]


@contextmanager
def app_in_chromium() -> Iterator[tuple[Any, str]]:
    """Debian's headless Chromium and the URL of the app launched in-process (no network, no browser
    download); skips the test where Playwright or Chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium")
    import app

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", css=app.CSS)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield browser, app.demo.local_url
            browser.close()
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A Chromium tab on the app."""
    with app_in_chromium() as (browser, url):
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(url)
        yield tab


LIVE = ("fusion", "agreement")   # drawn by the page on a canvas (fusioncam/ui/live.py)


def map_version(page: Any, name: str) -> str | None:
    """What a map card shows now: the ``src`` of a static map's picture, or the payload key and
    paint count of a live card; ``None`` while the card is empty."""
    if name in LIVE:
        return page.evaluate(f"""() => {{ const d = document.querySelector('#map-{name} .fc-live').dataset;
                                         return d.state === 'drawn' ? `${{d.key}}#${{d.paints}}` : null; }}""")
    picture = page.locator(f"#map-{name} img")
    return picture.first.get_attribute("src") if picture.count() else None


def wait_for_new_map(page: Any, name: str, old: str | None) -> str:
    """Wait until the map card shows something other than ``old``; return what it shows."""
    page.wait_for_function(
        """([name, old, live]) => {
             if (live) { const d = document.querySelector(`#map-${name} .fc-live`).dataset;
                         return d.state === 'drawn' && `${d.key}#${d.paints}` !== old; }
             const img = document.querySelector(`#map-${name} img`);
             return img && img.src && img.src !== old; }""",
        arg=[name, old or "", name in LIVE], timeout=SLOW_MS)
    version = map_version(page, name)
    assert version
    return version


def wait_for_summary(page: Any, text: str) -> str:
    """Wait until the summary holds ``text`` (a finished explanation says where the views disagree)."""
    page.wait_for_function("text => document.querySelector('#summary').innerText.includes(text)", arg=text,
                           timeout=SLOW_MS)
    return page.locator("#summary").inner_text()


def test_upload_run_tune_and_switch_class(page: Any, tmp_path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(CAT))
    page.locator("#run").click()
    for name in MAPS:
        wait_for_new_map(page, name, None)
    summary = wait_for_summary(page, "disagree")
    fused = map_version(page, "fusion")

    strength = page.locator("#strength input[type=number]")
    strength.fill("4")
    strength.press("Enter")
    fused = wait_for_new_map(page, "fusion", fused)               # repainted in the page
    summary = wait_for_summary(page, "At λ = 4 ")                  # the server learnt λ once it settled
    assert page.locator("#summary").inner_text().split("\n")[0] == summary.split("\n")[0]

    choice = page.locator("#target-class input")
    choice.click()
    choice.fill("282")
    page.get_by_role("option").filter(has_text="tiger cat").first.click()
    scorecam = map_version(page, "scorecam")
    wait_for_new_map(page, "scorecam", scorecam)
    wait_for_new_map(page, "fusion", fused)
    wait_for_summary(page, "tiger cat")
    assert page.locator("#strength input[type=number]").input_value() == "4"

    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000


def test_moves_while_a_new_image_is_explained_never_bring_back_the_old_one(page: Any) -> None:
    """Image A explained; image B uploaded; θ and λ moved during B's Score-CAM: no map of A is shown
    meanwhile, and the page ends on B with the moves applied to B."""
    page.locator("#input-image input[type=file]").set_input_files(str(CAT))
    page.locator("#run").click()
    first_line_a = wait_for_summary(page, "disagree").split("\n")[0]
    wait_for_new_map(page, "fusion", None)
    generation_a = int(page.evaluate("document.querySelector('#map-fusion .fc-live').dataset.generation"))
    shown_a = {name: map_version(page, name) for name in ("gradcam", "scorecam", "combined")}

    def not_a(name: str) -> bool:   # empty, or a (partial) map of B: never A's
        if name in LIVE:
            card = page.evaluate(f"({{...document.querySelector('#map-{name} .fc-live').dataset}})")
            return card["state"] != "drawn" or int(card["generation"]) > generation_a
        return map_version(page, name) != shown_a[name]

    page.locator("#input-image input[type=file]").set_input_files(str(COFFEE))     # B: explained at once
    wait_for_new_map(page, "gradcam", shown_a["gradcam"])
    for name in ("scorecam", "combined", "fusion", "agreement"):
        assert not_a(name), f"{name} still shows image A while B is explained"
    theta = page.locator("#theta input[type=number]")
    theta.fill("30")
    theta.press("Enter")
    page.locator("#strength input[type=range]").evaluate(
        "(slider) => { for (const v of [2, 3]) { slider.value = v; "
        "slider.dispatchEvent(new Event('input', {bubbles: true})); } }")
    for name in ("scorecam", "fusion"):
        assert not_a(name), f"{name} shows image A again after a move during B"

    summary = wait_for_summary(page, "θ = 30 ")
    wait_for_summary(page, "disagree")
    page.wait_for_timeout(3000)                                    # let any late answer land
    summary = page.locator("#summary").inner_text()
    assert summary.split("\n")[0] != first_line_a and "θ = 30 " in summary
    card = page.evaluate("({...document.querySelector('#map-fusion .fc-live').dataset})")
    assert card["state"] == "drawn" and int(card["generation"]) > generation_a
    assert float(card["strength"]) == 3.0


def test_score_cam_streams_partial_maps_then_says_done(page: Any, tmp_path: Path) -> None:
    """An image of the visitor's own (no kept copy): partial Score-CAM maps with their progress
    while #explain-state reads "partial", then the exact maps and "done"."""
    from PIL import Image, ImageOps

    upload = tmp_path / "mirrored-coffee.png"
    ImageOps.mirror(Image.open(COFFEE).convert("RGB")).save(upload)
    page.locator("#input-image input[type=file]").set_input_files(str(upload))
    page.wait_for_function("() => document.querySelector('#explain-state').textContent.trim() === 'partial'",
                           timeout=SLOW_MS)
    label = page.locator("#map-fusion .fc-label").inner_text()
    assert "Score-CAM:" in label and "% of channels" in label
    assert page.locator("#map-scorecam img").count() == 1          # a partial Score-CAM picture is on show
    page.screenshot(path=str(tmp_path / "partial.png"), full_page=True)
    page.wait_for_function("() => document.querySelector('#explain-state').textContent.trim() === 'done'",
                           timeout=SLOW_MS)
    assert page.locator("#map-fusion .fc-label").inner_text() == "⑤ Fusion-CAM"
    wait_for_summary(page, "disagree")
    page.screenshot(path=str(tmp_path / "done.png"), full_page=True)
    if os.environ.get("FUSIONCAM_SCREENSHOTS"):
        for name in ("partial.png", "done.png"):
            (Path(os.environ["FUSIONCAM_SCREENSHOTS"]) / name).write_bytes((tmp_path / name).read_bytes())
