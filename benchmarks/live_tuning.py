"""How fast the page repaints Fusion-CAM when λ moves: measured in the page, idle and busy.

Each move is a real key press on the ``#strength`` slider (ArrowRight/ArrowLeft: the browser's own
``input`` event). The live cards record, for every such event, the time from the event's timestamp to
the first animation frame after both cards have redrawn (``fusioncamLive.latencies``, milliseconds);
this script reads them back and reports the median and the worst of twenty moves:

- **idle**: nothing else runs;
- **busy**: another client explains an image at the same time (``/explain`` through ``gradio_client``
  in a thread, over and over), or, on the test page, the same explanation run in a thread here.

Usage::

    python app.py &                                   # then
    python benchmarks/live_tuning.py http://127.0.0.1:7860
    python benchmarks/live_tuning.py --test-page      # the page of tests/test_live.py, bundled model

Needs Debian's Chromium at /usr/bin/chromium and Playwright (``requirements-dev.txt``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MOVES = 20
PAUSE_S = 0.15           # between two key presses: each repaint is measured on its own
DRAWN = "document.querySelector('#map-{kind} .fc-live').dataset.state === 'drawn'"
LATENCIES = """() => { const cards = ['fusion', 'agreement'].map(
    (kind) => document.querySelector(`#map-${kind} .fc-live`).fusioncamLive.latencies);
  return cards[0].map((_, i) => Math.max(...cards.map((values) => values[i] ?? Infinity))); }"""


def explain_in_app(page: Any, image: Path, timeout_ms: int) -> None:
    """Upload ``image`` on the app's page, press Explain and wait until both live cards have drawn."""
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    page.locator("#run").click()
    for kind in ("fusion", "agreement"):
        page.wait_for_function(DRAWN.format(kind=kind), timeout=timeout_ms)


def moves(page: Any, count: int = MOVES) -> list[float]:
    """Press the slider's arrow keys ``count`` times (up, then back down) and return each move's
    repaint latency in milliseconds, as the page measured it."""
    page.locator("#strength input[type=range]").focus()
    before = len(page.evaluate(LATENCIES))
    for index in range(count):
        page.keyboard.press("ArrowRight" if index < count // 2 else "ArrowLeft")
        time.sleep(PAUSE_S)
    page.wait_for_function(f"({LATENCIES})().length >= {before + count}", timeout=10_000)
    return page.evaluate(LATENCIES)[before:before + count]


@contextmanager
def busy(work: Callable[[], None]) -> Iterator[list[float]]:
    """Run ``work`` over and over in a thread while the block runs; yields the list of its durations."""
    stop, durations = threading.Event(), []

    def loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            work()
            durations.append(time.perf_counter() - started)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(2.0)          # let the first explanation get going
    try:
        yield durations
    finally:
        stop.set()
        thread.join()


def app_explainer(url: str, image: Path) -> Callable[[], None]:
    """Another visitor: a gradio_client session that explains ``image`` on the app."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    return lambda: client.predict(handle_file(str(image)), api_name="/explain")


@contextmanager
def test_page(image: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """The page of tests/test_live.py on the bundled model's explanation of ``image`` (launched here),
    and a busy load: the same model explaining another image in a thread of this process."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from PIL import Image
    from test_live import build_page

    from fusioncam import explain, load_model
    from fusioncam.ui.session import display_image

    model = load_model("efficientnet_lite0", device="cpu")
    explanation = explain(model, Image.open(image).convert("RGB"))
    page = build_page(explanation, display_image(explanation.image))
    url = page.launch()
    other = Image.open(ASSETS / "astronaut.jpg").convert("RGB")
    try:
        yield url, lambda: explain(model, other)
    finally:
        page.demo.close()


def summary(name: str, latencies: list[float], note: str) -> str:
    """One Markdown table row: median and worst of the moves, and what ran meanwhile."""
    return (f"| {name} | {len(latencies)} | {statistics.median(latencies):.1f} | {max(latencies):.1f} | {note} |")


def run(url: str | None, image: Path, timeout_ms: int) -> list[str]:
    """Measure idle and busy on the app at ``url`` (or on the test page when ``url`` is None)."""
    from playwright.sync_api import sync_playwright

    rows = ["| server | moves | median (ms) | worst (ms) | meanwhile |", "|---|---|---|---|---|"]
    with (test_page(image) if url is None else _app(url)) as (address, work), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(address)
        if url is None:
            page.locator("#push").click()
            for kind in ("fusion", "agreement"):
                page.wait_for_function(DRAWN.format(kind=kind), timeout=timeout_ms)
        else:
            explain_in_app(page, image, timeout_ms)
        moves(page, 4)       # warm-up: the first repaints compile the page's code
        rows.append(summary("idle", moves(page), "nothing"))
        with busy(work) as durations:
            latencies = moves(page)
        rows.append(summary("busy", latencies, f"{len(durations)} explanation(s) finished, one running"))
        browser.close()
    return rows


@contextmanager
def _app(url: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A running app: its URL, and another visitor explaining an image on it."""
    yield url, app_explainer(url, ASSETS / "astronaut.jpg")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="the running app, e.g. http://127.0.0.1:7860")
    parser.add_argument("--test-page", action="store_true", help="serve the page of tests/test_live.py instead")
    parser.add_argument("--image", type=Path, default=ASSETS / "cat_and_coffee.jpg", help="the image to explain")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the first explanation")
    args = parser.parse_args(argv)
    if (args.url is None) == (not args.test_page):
        parser.error("give the app's URL or --test-page (not both)")
    print("\n".join(run(args.url, args.image, int(args.timeout * 1000))))


if __name__ == "__main__":
    main()
