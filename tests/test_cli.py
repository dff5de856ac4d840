"""The command line: outputs, shapes and ranges; every bad input gives exit code 2 and one line."""

from __future__ import annotations

import html
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusioncam import MAP_NAMES

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusioncam", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_explain_writes_every_map_overlay_and_the_report(tmp_path: Path, cat_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("explain", str(cat_path), "--theta", "15", "--strength", "2", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["class_name"] == "Egyptian cat" and report["layer"] == "bn2"
    assert report["params"]["theta"] == 15 and report["params"]["strength"] == 2
    display = Image.open(cat_path).size
    for name in MAP_NAMES:
        array = np.load(out / f"{name}.npy")
        assert array.shape == (224, 224) and array.dtype == np.float32
        assert array.min() >= 0 and array.max() <= 1
        with Image.open(out / f"{name}.png") as picture:
            assert picture.format == "PNG" and picture.size == display
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.npy" for n in MAP_NAMES] + [f"{n}.png" for n in MAP_NAMES] + ["report.json"])


@pytest.mark.slow
def test_html_report_and_panel_and_the_command_that_reproduces_them(tmp_path: Path, cat_path: Path) -> None:
    out = tmp_path / "first run"
    result = run_cli("explain", str(cat_path), "--region-method", "scorecam-topk", "--top-k", "8", "--theta", "20",
                     "--device", "cpu", "--out", str(out), "--html", "--png")
    assert result.returncode == 0, result.stderr
    assert {"report.html", "panel.png", "report.json"} <= {p.name for p in out.iterdir()}
    page = (out / "report.html").read_text(encoding="utf-8")
    words = shlex.split(html.unescape(re.search(r"<pre id=command><code>(.*?)</code>", page, re.S).group(1)))
    assert words[:4] == ["python", "-m", "fusioncam", "explain"] and "--top-k" in words
    again = tmp_path / "second run"
    words[words.index("--out") + 1] = str(again)
    result = run_cli(*words[3:])
    assert result.returncode == 0, result.stderr
    first, second = (json.loads((folder / "report.json").read_text()) for folder in (out, again))
    for key in ("model", "layer", "class_index", "params", "betas", "gammas"):
        assert first[key] == second[key], key
    assert (again / "report.html").exists() and (again / "panel.png").exists()


def test_layers_lists_candidates_with_the_default_marked() -> None:
    result = run_cli("layers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "* bn2  (1280×7×7)" in lines
    assert any(line.strip().startswith("blocks.5") for line in lines)


@pytest.fixture
def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jpg"
    path.write_text("<html>this is not a picture</html>")
    return path


@pytest.mark.parametrize("case", ["missing", "not-image", "empty", "unknown-model", "unknown-layer",
                                  "class-range", "bad-choice", "offline-hub", "no-steps"])
def test_bad_input_gives_exit_code_2_one_line_and_no_output(case: str, tmp_path: Path, cat_path: Path,
                                                            not_an_image: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    image = {"missing": str(tmp_path / "nope.jpg"), "not-image": str(not_an_image), "empty": str(empty)}.get(
        case, str(cat_path))
    extra = {"unknown-model": ["--model", "resnet9000"], "unknown-layer": ["--layer", "blocks.99"],
             "class-range": ["--class", "1000"], "bad-choice": ["--weights", "softmax"],
             "offline-hub": ["--model", "timm:this_model_does_not_exist"],
             "no-steps": ["--html", "--faithfulness", "0"]}.get(case, [])
    out = tmp_path / "out"
    result = run_cli("explain", image, *extra, "--out", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("fusioncam: error: ") and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_compare_writes_both_sides_and_b_is_the_second_class_of_one_model(tmp_path: Path, cat_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("compare", str(cat_path), "--device", "cpu", "--strength", "2", "--out", str(out), "--html")
    assert result.returncode == 0, result.stderr
    side_a, side_b = (json.loads((out / side / "report.json").read_text()) for side in ("a", "b"))
    assert side_a["class_name"] == "Egyptian cat" and side_b["class_index"] == side_a["top5"][1]["index"]
    assert side_a["model"] == side_b["model"] == "efficientnet_lite0"
    assert side_a["params"]["strength"] == side_b["params"]["strength"] == 2
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted(
        [f"{n}.npy" for n in MAP_NAMES] + [f"{n}.png" for n in MAP_NAMES] + ["report.json", "report.html"])
    record = json.loads((out / "compare.json").read_text())
    assert list(record) == ["spearman", "iou_top20", "average_drop_a", "average_drop_b", "cross_average_drop_a",
                            "cross_average_drop_b", "shared_region"]
    assert -1 <= record["spearman"] <= 1 and 0 <= record["iou_top20"] <= 1 and record["shared_region"] == 1
    difference = np.load(out / "difference.npy")
    assert difference.shape == Image.open(cat_path).size[::-1] and difference.dtype == np.float32
    assert difference.min() >= -1 and difference.max() <= 1
    page = (out / "compare.html").read_text(encoding="utf-8")
    words = shlex.split(html.unescape(re.search(r"<pre id=command><code>(.*?)</code>", page, re.S).group(1)))
    assert words[3] == "compare" and words[words.index("--class-b") + 1] == str(side_b["class_index"])


@pytest.mark.parametrize(("extra", "side"), [(["--class-b", "5000"], "side B: class 5000"),
                                             (["--layer-a", "blocks.99"], "side A: "),
                                             (["--model-b", "resnet9000"], "side B: unknown model")])
def test_compare_bad_input_names_the_side_exit_code_2_and_no_output(extra: list[str], side: str, tmp_path: Path,
                                                                    cat_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("compare", str(cat_path), *extra, "--device", "cpu", "--out", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"fusioncam: error: {side}") and "Traceback" not in result.stderr
    assert not out.exists()
