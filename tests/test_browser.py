"""The real page in Debian's headless Chromium: upload, run, tune λ, switch the class."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
CAT = Path(__file__).resolve().parent.parent / "assets" / "cat.jpg"
MAPS = ("gradcam", "denoised", "scorecam", "combined", "fusion", "agreement")
SLOW_MS = 240_000   # a full Score-CAM on a busy 2-core CPU

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A Chromium tab on the app, launched in-process (no network, no browser download)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import app

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", css=app.CSS)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(app.demo.local_url)
            yield tab
            browser.close()
    finally:
        app.demo.close()


def map_source(page: Any, name: str) -> str | None:
    """The ``src`` of a map's picture, or ``None`` while it is empty."""
    picture = page.locator(f"#map-{name} img")
    return picture.first.get_attribute("src") if picture.count() else None


def wait_for_new_map(page: Any, name: str, old: str | None) -> str:
    """Wait until the map's picture exists and differs from ``old``; return its ``src``."""
    page.wait_for_function(
        """([name, old]) => { const img = document.querySelector(`#map-${name} img`);
                               return img && img.src && img.src !== old; }""",
        arg=[name, old or ""], timeout=SLOW_MS)
    source = map_source(page, name)
    assert source
    return source


def test_upload_run_tune_and_switch_class(page: Any, tmp_path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(CAT))
    page.locator("#run").click()
    for name in MAPS:
        wait_for_new_map(page, name, None)
    page.wait_for_function("document.querySelector('#summary').innerText.includes('model confidence')",
                           timeout=SLOW_MS)
    summary = page.locator("#summary").inner_text()
    fused = map_source(page, "fusion")

    strength = page.locator("#strength input[type=number]")
    strength.fill("4")
    strength.press("Enter")
    fused = wait_for_new_map(page, "fusion", fused)
    # The summary may still show Gradio's pending timer ("0.0s") for a moment after the map lands.
    page.wait_for_function("document.querySelector('#summary').innerText.includes('model confidence')",
                           timeout=SLOW_MS)
    assert page.locator("#summary").inner_text().split("\n")[0] == summary.split("\n")[0]

    choice = page.locator("#target-class input")
    choice.click()
    choice.fill("282")
    page.get_by_role("option").filter(has_text="tiger cat").first.click()
    scorecam = map_source(page, "scorecam")
    wait_for_new_map(page, "scorecam", scorecam)
    wait_for_new_map(page, "fusion", fused)
    page.wait_for_function("document.querySelector('#summary').innerText.includes('tiger cat')", timeout=SLOW_MS)
    assert page.locator("#strength input[type=number]").input_value() == "4"

    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
