"""Live tuning: the kept maps the page gets, and the page's own fusion in headless Chromium.

The browser tests run a small in-process page (:func:`build_page`: the app's ``#strength``,
``#colormap`` and ``#opacity`` controls and the two live cards) on a tiny deterministic model, so
they need neither the bundled model nor the app. ``benchmarks/live_tuning.py --test-page`` serves
the same page.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fusioncam import fusion
from fusioncam.explain import MAP_NAMES, Explanation, explain
from fusioncam.live import blank_payload, disagreement_share, kept_maps, live_payload
from fusioncam.models import LoadedModel
from fusioncam.render import (
    AGREEMENT_COLORMAP,
    COLORMAPS,
    COLOUR_BLIND_SAFE,
    agreement_overlay,
    colour_table,
    overlay,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SERVER_CALLS = ("/gradio_api/queue/join", "/gradio_api/run/", "/gradio_api/call/")
WAIT_MS = 20_000
gr = pytest.importorskip("gradio")   # at module level: the commit handler's gr.EventData hint must resolve


def tiny_explanation() -> Explanation:
    """A TinyNet explanation at a non-square model resolution (48×64), so rows and columns cannot mix."""
    from conftest import TinyNet

    model = LoadedModel.from_module(TinyNet(), name="tiny", input_size=(48, 64), mean=(0.5, 0.5, 0.5),
                                    std=(0.25, 0.25, 0.25), class_names=[f"c{i}" for i in range(5)],
                                    default_layer="features")
    generator = torch.Generator().manual_seed(1)
    image = (torch.rand(40, 48, 3, generator=generator) * 120).to(torch.uint8)
    image[8:24, 10:30] = 230
    return explain(model, image.numpy())


# ---------------------------------------------------------------------------------------------
# The library: what the page gets


def test_kept_maps_reproduce_the_library_fusion_bit_for_bit() -> None:
    explanation = tiny_explanation()
    for strength in (0.0, 0.4, 1.0, 3.5):
        refused = explanation.refuse(strength=strength)
        l1, l2 = (torch.from_numpy(m) for m in kept_maps(refused))
        s = fusion.agreement(l1, l2, strength)
        fused = fusion.normalize(s * torch.maximum(l1, l2) + (1 - s) * (l1 + l2) / 2)
        assert np.array_equal(fused.numpy(), refused.maps["fusion"])
        assert np.array_equal(s.numpy(), refused.maps["agreement"])


def test_payload_carries_the_kept_maps_losslessly() -> None:
    explanation = tiny_explanation()
    display = explanation.image.resize((96, 72))
    payload = live_payload(explanation, 7, display, "cividis", 0.35)
    json.dumps(payload)
    l1, l2 = kept_maps(explanation)
    assert (payload["width"], payload["height"]) == (64, 48)
    for name, kept in (("l1", l1), ("l2", l2)):
        sent = np.frombuffer(base64.b64decode(payload[name]), dtype="<f4").reshape(48, 64)
        assert np.array_equal(sent, kept)
    assert payload["generation"] == 7 and payload["key"].startswith("7-")
    assert (payload["strength"], payload["colormap"], payload["opacity"]) == (1.0, "cividis", 0.35)
    assert photo(payload).size == (96, 72)
    assert live_payload(explanation.refuse(strength=2), 7, display, "jet", 0.5)["key"] == payload["key"]
    assert live_payload(explanation.refuse(theta=40), 7, display, "jet", 0.5)["key"] != payload["key"]
    assert blank_payload(8) == {"generation": 8}


def test_disagreement_share() -> None:
    agreement = np.array([[1.0, 0.95, 0.9], [0.89, 0.2, 0.0]], dtype=np.float32)
    assert disagreement_share(agreement) == pytest.approx(3 / 6)
    assert disagreement_share(agreement, threshold=0.5) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="empty"):
        disagreement_share(np.zeros((0, 3)))


def test_colour_maps() -> None:
    assert {"jet", *COLOUR_BLIND_SAFE} <= set(COLORMAPS)
    table = colour_table(AGREEMENT_COLORMAP).astype(float)
    lightness = table @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(lightness) >= 0)                  # agree (S = 1) is lightest, in grey too
    for name in COLORMAPS:                                  # and it is no saliency map
        assert np.abs(colour_table(name).astype(float) - table).mean() > 40
    with pytest.raises(ValueError, match="unknown colour map"):
        colour_table("rainbow")


def test_weights_chart_leaves_room_for_every_bar_and_label() -> None:
    from fusioncam.ui.figures import value_range, weights_figure

    report = {"betas": {"denoised": 0.95, "region": -0.31, "combined": 0.4, "denoised_hat": 1.2, "region_hat": -0.2},
              "gammas": {"combined": 1.07, "region": -0.07}}
    low, high = weights_figure(report).layout.yaxis.range
    assert low <= -0.31 - 0.2 * (1.2 + 0.31) + 1e-9 and high >= 1.2 + 0.2 * (1.2 + 0.31) - 1e-9
    assert value_range([0.2, 0.6]) == pytest.approx([0.0, 0.72])
    assert value_range([-0.5, -0.1]) == pytest.approx([-0.6, 0.0])
    assert value_range([0.0]) == pytest.approx([0.0, 0.2])


def photo(payload: dict[str, Any]) -> Image.Image:
    """The photo a payload carries, decoded."""
    return Image.open(io.BytesIO(base64.b64decode(payload["image"].split(",", 1)[1]))).convert("RGB")


# ---------------------------------------------------------------------------------------------
# The test page


class Page:
    """A Blocks page with the app's controls and the two live cards. The ``#push`` button sends the
    cards the payload named in ``#push-spec`` (JSON: ``{"generation", "theta"}``, ``{"blank": g}`` or
    ``null``); every ``commit`` the fusion card fires is recorded in :attr:`commits`."""

    def __init__(self, explanation: Explanation, display: Image.Image) -> None:
        from fusioncam.ui.figures import overlays, weights_figure
        from fusioncam.ui.live import COLORMAP_CHOICES, MAP_GRID_CSS, live_map

        self.explanation, self.display = explanation, display
        self.commits: list[dict[str, Any]] = []
        self.pushes = 0
        self.css = MAP_GRID_CSS
        captions = dict(zip(MAP_NAMES, ("① Grad-CAM", "② Denoised", "③ Score-CAM", "④ Combined", "⑤ Fusion-CAM",
                                        "⑥ Agreement"), strict=True))
        with gr.Blocks(title="Live map test page") as self.demo:
            with gr.Row(equal_height=False):
                with gr.Column(scale=4, min_width=300):
                    gr.Slider(0, 5, value=1, step=0.1, label="Fusion strength λ", elem_id="strength", interactive=True)
                    colormap = gr.Dropdown(COLORMAP_CHOICES, value="jet", label="Colour map", elem_id="colormap",
                                           interactive=True)
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity",
                                        interactive=True)
                    spec = gr.Textbox('{"generation": 1}', label="push", elem_id="push-spec", interactive=True)
                    push = gr.Button("push", elem_id="push")
                    pushed = gr.Markdown("pushed 0", elem_id="pushed")
                    committed = gr.Markdown("nothing committed", elem_id="committed")
                with gr.Column(scale=8):
                    cards: dict[str, Any] = {}
                    for row in (MAP_NAMES[:3], MAP_NAMES[3:]):
                        with gr.Row(equal_height=False):
                            for name in row:
                                if name in ("fusion", "agreement"):
                                    cards[name] = live_map(name, captions[name])
                                else:
                                    cards[name] = gr.Image(label=captions[name], format="png", interactive=False,
                                                           elem_id=f"map-{name}", buttons=["download", "fullscreen"])
                    weights = gr.Plot(label="Contribution weights (β, γ)", elem_id="weights-plot")

            def send(text: str, colormap_name: str, alpha: float) -> Iterator[tuple]:
                """A generator, as the app's explain handler: with ``"stream": true`` it yields the blank
                payload of the generation first, then the maps (Gradio sends the second as a diff)."""
                self.pushes += 1
                request = json.loads(text)
                if request is None or "blank" in request:
                    value = None if request is None else blank_payload(request["blank"])
                    yield (*(None for _ in MAP_NAMES[:4]), value, value, None, f"pushed {self.pushes}")
                    return
                if request.get("stream"):
                    blank = blank_payload(request["generation"])
                    yield (*(None for _ in MAP_NAMES[:4]), blank, blank, None, f"pushed {self.pushes} (blank)")
                current = self.explanation.refuse(theta=request.get("theta"))
                pictures = overlays(self.display, current.maps, colormap_name, alpha, MAP_NAMES[:4])
                payload = live_payload(current, request["generation"], self.display, colormap_name, alpha)
                yield (*pictures, payload, payload, weights_figure(current.report), f"pushed {self.pushes}")

            def commit(event: gr.EventData) -> str:
                self.commits.append(dict(event._data))
                return f"committed λ = {event.strength}"

            push.click(send, [spec, colormap, opacity], [*cards.values(), weights, pushed])
            cards["fusion"].commit(commit, None, committed)

    def launch(self) -> str:
        self.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", css=self.css)
        return self.demo.local_url


def build_page(explanation: Explanation | None = None, display: Image.Image | None = None) -> Page:
    """The test page on ``explanation`` (default: the tiny model's) drawn over ``display``."""
    explanation = explanation or tiny_explanation()
    return Page(explanation, display or explanation.image.resize((96, 72), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------
# The page in Chromium

browser = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed at /usr/bin/chromium")


@pytest.fixture(scope="module")
def live_page() -> Iterator[tuple[Any, Page, list[str]]]:
    """A Chromium tab on the test page, and the server calls it makes (Gradio queue/API POSTs)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    page = build_page()
    url = page.launch()
    calls: list[str] = []
    lock = threading.Lock()

    def record(request: Any) -> None:
        if request.method == "POST" and any(part in request.url for part in SERVER_CALLS):
            with lock:
                calls.append(request.url)

    try:
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            tab = chromium.new_page(viewport={"width": 1400, "height": 1000})
            tab.on("request", record)
            tab.goto(url)
            tab.wait_for_selector("#map-fusion .fc-live")
            yield tab, page, calls
            chromium.close()
    finally:
        page.demo.close()


def card(kind: str) -> str:
    return f"document.querySelector('#map-{kind} .fc-live')"


def dataset(tab: Any, kind: str) -> dict[str, str]:
    return tab.evaluate(f"({{...{card(kind)}.dataset}})")


def push(tab: Any, page: Page, spec: Any) -> None:
    """Send the cards a payload (see :class:`Page`) and wait until the page has it."""
    expected = f"pushed {page.pushes + 1}"
    tab.locator("#push-spec textarea").fill(json.dumps(spec))
    tab.locator("#push").click()
    tab.wait_for_function("text => document.querySelector('#pushed').innerText.trim() === text", arg=expected,
                          timeout=WAIT_MS)
    time.sleep(0.2)


def show(tab: Any, page: Page, spec: dict[str, Any]) -> None:
    """Push ``spec`` and wait until the fusion card has drawn it."""
    push(tab, page, spec)
    tab.wait_for_function(f"{card('fusion')}.dataset.generation === '{spec['generation']}' && "
                          f"{card('fusion')}.dataset.state === 'drawn'", timeout=WAIT_MS)


def set_slider(tab: Any, element_id: str, value: float, event: str = "input") -> None:
    tab.evaluate("""([id, value, type]) => { const range = document.querySelector(`#${id} input[type=range]`);
                     range.value = value; range.dispatchEvent(new Event(type, {bubbles: true})); }""",
                 [element_id, value, event])


def levels(tab: Any, kind: str, shape: tuple[int, int]) -> np.ndarray:
    values = tab.evaluate(f"{card(kind)}.fusioncamLive.levels()")
    return np.array(values, dtype=np.int16).reshape(shape)


def canvas_pixels(tab: Any, kind: str) -> np.ndarray:
    data = tab.evaluate(f"""(() => {{ const c = {card(kind)}.querySelector('.fc-canvas');
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }})()""")
    width, height, values = data
    return np.array(values, dtype=np.int16).reshape(height, width, 4)[..., :3]


def eight_bit(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) * 255).astype(np.int16)


@pytest.mark.browser
@browser
def test_page_fusion_equals_the_library(live_page: tuple[Any, Page, list[str]]) -> None:
    tab, page, _ = live_page
    set_slider(tab, "strength", 1.0)
    show(tab, page, {"generation": 1})
    explanation, shape = page.explanation, page.explanation.maps["fusion"].shape
    payload = live_payload(explanation, 1, page.display, "jet", 0.5)
    for strength in (0.3, 1.0, 2.7):
        set_slider(tab, "strength", strength)
        tab.wait_for_function(f"{card('agreement')}.dataset.strength === '{strength:g}'", timeout=WAIT_MS)
        expected = explanation.refuse(strength=strength).maps
        fused, agreement = levels(tab, "fusion", shape), levels(tab, "agreement", shape)
        assert np.abs(fused - eight_bit(expected["fusion"])).max() <= 1, strength
        assert np.abs(agreement - eight_bit(expected["agreement"])).max() <= 1, strength
        share = float(dataset(tab, "agreement")["disagreement"])
        assert share == pytest.approx(disagreement_share(expected["agreement"]), abs=2 / fused.size), strength
        assert f"{100 * share:.0f}" in tab.locator("#map-agreement .fc-note").inner_text() or share < 0.1
        # The picture: the library's overlay of the same map on the same photo (a JPEG decoder's and a
        # rounding's worth of difference at most).
        for kind, library in (("fusion", overlay(photo(payload), expected["fusion"], "jet", 0.5)),
                              ("agreement", agreement_overlay(photo(payload), expected["agreement"], 0.5))):
            drawn = canvas_pixels(tab, kind)
            assert drawn.shape == library.shape
            difference = np.abs(drawn - library.astype(np.int16))
            assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 8, (kind, strength)


@pytest.mark.browser
@browser
def test_each_map_card_fits_its_picture(live_page: tuple[Any, Page, list[str]]) -> None:
    tab, page, _ = live_page
    show(tab, page, {"generation": 1})
    tab.wait_for_selector("#map-combined img")
    aspect = page.display.width / page.display.height
    for selector in ("#map-gradcam img", "#map-combined img", "#map-fusion .fc-canvas", "#map-agreement .fc-canvas"):
        picture = tab.locator(selector).bounding_box()
        card = tab.locator(selector.split()[0]).bounding_box()
        assert picture["width"] / picture["height"] == pytest.approx(aspect, rel=0.03), selector
        assert picture["width"] >= card["width"] - 40, selector           # it fills the card's width
    for name in ("gradcam", "combined"):                                   # and the card is no taller than it
        picture, card = tab.locator(f"#map-{name} img").bounding_box(), tab.locator(f"#map-{name}").bounding_box()
        assert card["height"] - picture["height"] < 45, name


@pytest.mark.browser
@browser
def test_drag_repaints_in_the_page_and_commits_once(live_page: tuple[Any, Page, list[str]]) -> None:
    tab, page, calls = live_page
    set_slider(tab, "strength", 1.0)
    show(tab, page, {"generation": 2})
    time.sleep(0.6)
    page.commits.clear()
    before = len(calls)
    # A drag: five moves, one frame apart, all inside the page (nothing waits on the test's process).
    hashes = tab.evaluate("""async (values) => {
        const range = document.querySelector('#strength input[type=range]');
        const canvas = document.querySelector('#map-fusion .fc-canvas');
        const hashes = [];
        for (const value of values) {
          range.value = value; range.dispatchEvent(new Event('input', {bubbles: true}));
          await new Promise(requestAnimationFrame);
          const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let hash = 0; for (let i = 0; i < data.length; i++) hash = (hash * 31 + data[i]) | 0;
          hashes.push(hash);
        }
        return hashes; }""", [1.4, 1.9, 2.5, 3.2, 4.1])
    assert len(set(hashes)) == 5                                   # the picture changed each time
    assert dataset(tab, "fusion")["strength"] == "4.1"
    tab.wait_for_function("document.querySelector('#committed').innerText.includes('4.1')", timeout=WAIT_MS)
    time.sleep(0.6)                                                 # room for a second, wrong call
    assert len(calls) - before == 1                                 # one server call, after the drag
    assert page.commits == [{"strength": 4.1, "generation": 2, "key": dataset(tab, "fusion")["key"]}]

    # Keys move it too (each press an input and a change): still one call, for the last value.
    page.commits.clear()
    before = len(calls)
    tab.locator("#strength input[type=range]").focus()
    for _ in range(3):
        tab.keyboard.press("ArrowRight")
    tab.wait_for_function("document.querySelector('#committed').innerText.includes('4.4')", timeout=WAIT_MS)
    time.sleep(0.6)
    assert len(calls) - before == 1 and page.commits[-1]["strength"] == pytest.approx(4.4)

    # Colour map and opacity repaint in the page and ask the server nothing.
    before, shown = len(calls), canvas_pixels(tab, "fusion")
    tab.locator("#colormap input").click()
    tab.get_by_role("option").filter(has_text="cividis").first.click()
    tab.wait_for_function(f"{card('fusion')}.dataset.colormap === 'cividis'", timeout=WAIT_MS)
    recoloured = canvas_pixels(tab, "fusion")
    assert np.abs(recoloured - shown).mean() > 5
    set_slider(tab, "opacity", 0.9)
    tab.wait_for_function(f"{card('agreement')}.dataset.opacity === '0.9'", timeout=WAIT_MS)
    assert np.abs(canvas_pixels(tab, "fusion") - recoloured).mean() > 5
    time.sleep(0.6)
    assert len(calls) == before


@pytest.mark.browser
@browser
def test_an_older_generation_never_overwrites_a_newer_picture(live_page: tuple[Any, Page, list[str]]) -> None:
    tab, page, _ = live_page
    show(tab, page, {"generation": 10, "theta": 40})
    newer = dataset(tab, "fusion")["key"]
    push(tab, page, {"generation": 9})                                   # a late answer for an older explanation
    for kind in ("fusion", "agreement"):
        assert dataset(tab, kind)["key"] == newer
    push(tab, page, {"blank": 11})                                       # a new explanation has started
    for kind in ("fusion", "agreement"):
        assert dataset(tab, kind)["state"] == "empty"
        assert tab.evaluate(f"{card(kind)}.querySelector('.fc-canvas').width") == 0
    push(tab, page, {"generation": 10})                                  # ... so the previous one stays away
    assert dataset(tab, "fusion")["state"] == "empty"
    show(tab, page, {"generation": 11, "stream": True})                  # blank, then the maps, as the app does
    push(tab, page, None)                                                # None empties the cards
    assert dataset(tab, "fusion")["state"] == "empty" and dataset(tab, "agreement")["state"] == "empty"
