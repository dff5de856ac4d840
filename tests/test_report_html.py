"""The kept report: ``report.html`` (self-contained, escaped, offline in Chromium), ``panel.png`` and
the command that reproduces them."""

from __future__ import annotations

import html
import json
import re
import shlex
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TinyNet
from PIL import Image

from fusioncam import MAP_NAMES, LoadedModel, cli, explain
from fusioncam.export import PANEL_SIZE, reproduce_command, write_explanation
from fusioncam.methods import SALIENCY_MAPS
from fusioncam.metrics import score_maps
from fusioncam.ui.export import export_html, export_zip

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ASSETS = Path(__file__).resolve().parent.parent / "assets"
HOSTILE_CLASS = '<img src=x onerror="alert(1)"> & <b>c0</b>'
HOSTILE_MODEL = "tiny</title><script>alert(2)</script>"
A4_LANDSCAPE_PX = (1062, 733)     # (297 − 2·8) × (210 − 2·8) mm at 96 px per inch: the printable area


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model's explanation of cat.jpg, scored, written with the HTML report and the panel;
    its class and model names are HTML that must never reach the page as markup."""
    model = LoadedModel.from_module(TinyNet(), name=HOSTILE_MODEL, input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                                    std=(0.25, 0.25, 0.25), class_names=[HOSTILE_CLASS, "c1", "c2", "c3", "c4"],
                                    default_layer="features")
    explanation = explain(model, str(ASSETS / "cat.jpg"), target=0, theta=15, strength=2.0)
    evidence = explanation.evidence
    scores = score_maps(model, evidence.x, {name: explanation.maps[name] for name in SALIENCY_MAPS}, evidence.target,
                        evidence.baseline, 8)
    out = tmp_path_factory.mktemp("report")
    command = reproduce_command(explanation.report, str(ASSETS / "cat.jpg"), str(out), "turbo", 0.6, True, True, 8)
    write_explanation(explanation, out, "turbo", 0.6, html_report=True, panel_png=True, faithfulness=scores,
                      command=command)
    return out


def test_report_is_one_escaped_file_with_nothing_to_fetch(written: Path) -> None:
    page = (written / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert "http://" not in page and "https://" not in page
    assert all(source.startswith("data:image/jpeg;base64,") for source in re.findall(r'\bsrc="([^"]*)"', page))
    assert len(re.findall(r"<img\b", page)) == 7
    assert HOSTILE_CLASS not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &lt;b&gt;c0" in page
    assert "<title>Fusion-CAM: &lt;img" in page and HOSTILE_MODEL not in page
    assert "@page { size: A4 landscape" in page


def test_report_json_keeps_the_faithfulness_the_page_shows(written: Path) -> None:
    report = json.loads((written / "report.json").read_text())
    assert report["faithfulness"]["steps"] == 8 and list(report["faithfulness"]["maps"]) == list(SALIENCY_MAPS)
    page = (written / "report.html").read_text(encoding="utf-8")
    fusion = report["faithfulness"]["maps"]["fusion"]
    assert f"<td>Fusion-CAM</td><td>{fusion['masked_probability']:.4f}</td>" in page


def test_the_command_in_the_page_parses_to_the_report_s_parameters(written: Path) -> None:
    report = json.loads((written / "report.json").read_text())
    page = (written / "report.html").read_text(encoding="utf-8")
    command = html.unescape(re.search(r"<pre id=command><code>(.*?)</code></pre>", page, re.S).group(1))
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "fusioncam", "explain"]
    args = cli.build_parser().parse_args(words[3:])
    params = report["params"]
    assert (args.model, args.layer, args.class_index) == (report["model"], report["layer"], report["class_index"])
    assert (args.theta, args.strength, args.weights, args.baseline) == (params["theta"], params["strength"],
                                                                      params["weights"], params["baseline"])
    assert (args.gradient_method, args.region_method) == (params["gradient_method"], params["region_method"])
    assert (args.colormap, args.opacity, args.faithfulness, args.html, args.png) == ("turbo", 0.6, 8, True, True)
    assert args.image == str(ASSETS / "cat.jpg") and args.out == str(written)


def test_panel_is_a_slide_with_seven_pictures(written: Path) -> None:
    with Image.open(written / "panel.png") as picture:
        assert picture.size == PANEL_SIZE and picture.mode == "RGB"
        pixels = np.asarray(picture)
    width, height = PANEL_SIZE
    for row in (0.3, 0.7):                         # the two rows of the 4×2 grid: pictures, not blank canvas
        for column in range(4 if row < 0.5 else 3):
            cell = pixels[int(height * row), column * width // 4 + 40: (column + 1) * width // 4 - 40]
            assert (cell < 250).any(), (row, column)


def test_the_page_s_downloads_are_written_by_the_library(tmp_path: Path) -> None:
    model = LoadedModel.from_module(TinyNet(), name="tiny", input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                                    std=(0.25, 0.25, 0.25), class_names=[f"c{i}" for i in range(5)],
                                    default_layer="features")
    explanation = explain(model, str(ASSETS / "coffee.jpg"))
    archive = export_zip(explanation, tmp_path)
    with zipfile.ZipFile(archive) as opened:
        assert set(opened.namelist()) == {f"{n}.{ext}" for n in MAP_NAMES for ext in ("npy", "png")} | {"report.json"}
    page = export_html(explanation, tmp_path).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "id=faithfulness" not in page
    assert "python -m fusioncam explain IMAGE --model tiny --layer features" in page
    scores = score_maps(model, explanation.evidence.x, {"fusion": explanation.maps["fusion"]},
                        explanation.evidence.target, explanation.evidence.baseline, 4)
    page = export_html(explanation, tmp_path, faithfulness=scores).read_text(encoding="utf-8")
    assert "<td>Fusion-CAM</td>" in page and "--faithfulness 4" in page


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.mark.browser
def test_report_opens_offline_in_chromium_and_matches_report_json(browser: Any, written: Path,
                                                                    tmp_path: Path) -> None:
    report = json.loads((written / "report.json").read_text())
    address = (written / "report.html").as_uri()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    blocked: list[str] = []
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    def guard(route: Any) -> None:
        if route.request.url == address:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(address)
    page.wait_for_load_state("load")
    pictures = page.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth, i.src.slice(0, 5)])")
    assert len(pictures) == 7 and all(done and width > 0 and src == "data:" for done, width, src in pictures)
    assert blocked == [] and [url for url in requested if not url.startswith("data:")] == [address]
    assert page.evaluate("document.scripts.length") == 0 and dialogs == []

    assert page.locator("#class").inner_text() == report["class_name"]
    assert int(page.locator("#class").get_attribute("data-index")) == report["class_index"]
    assert page.locator("#model").inner_text() == report["model"] and page.title().endswith(f"({report['model']})")
    for kind, block in (("beta", report["betas"]), ("gamma", report["gammas"])):
        cells = page.locator(f"[data-{kind}]")
        shown = {cells.nth(i).get_attribute(f"data-{kind}"): json.loads(cells.nth(i).get_attribute("data-value"))
                 for i in range(cells.count())}
        assert shown == block
    cells = page.locator("[data-param]")
    shown = {cells.nth(i).get_attribute("data-param"): json.loads(cells.nth(i).get_attribute("data-value"))
             for i in range(cells.count())}
    assert shown == {"model": report["model"], "layer": report["layer"], **report["params"]}
    assert page.locator("#faithfulness tr").count() == 1 + len(SALIENCY_MAPS)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    page.set_viewport_size({"width": A4_LANDSCAPE_PX[0], "height": A4_LANDSCAPE_PX[1]})
    page.emulate_media(media="print")
    bottom = page.evaluate("document.querySelector('.maps').getBoundingClientRect().bottom")
    assert bottom <= A4_LANDSCAPE_PX[1], f"the seven pictures end at {bottom}px, past the first A4 page"
    context.close()
