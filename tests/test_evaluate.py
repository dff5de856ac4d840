"""``python -m fusioncam evaluate``: JSON and table, labels from file names, metrics, resume, interruption, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from fusioncam import LoadedModel, cli
from fusioncam import evaluate as evaluation
from fusioncam.evaluate import default_metrics, label_of, list_images, parse_metrics
from fusioncam.methods import parse_methods

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FAST = ["--steps", "6", "--methods", "gradcam,layercam,scorecam,fusion,denoised"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three asset images, two named with a leading class index as in the ImageNet sample."""
    images = tmp_path / "images"
    images.mkdir()
    for source, name in (("cat.jpg", "001_cat.jpg"), ("coffee.jpg", "003_coffee.jpg"), ("rocket.jpg", "rocket.jpg")):
        shutil.copy(ASSETS / source, images / name)
    (images / "notes.txt").write_text("not an image")
    return images


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch, tiny_model: LoadedModel) -> list[str]:
    """The CLI with the tiny model in place of any named one; returns the files evaluated."""
    monkeypatch.setattr(evaluation, "load_model", lambda spec, device="auto": tiny_model)
    evaluated: list[str] = []
    original = evaluation.evaluate_image

    def spy(model, path, *args, **kwargs):
        evaluated.append(path.name)
        return original(model, path, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_image", spy)
    return evaluated


def test_helpers(folder: Path) -> None:
    assert label_of("000_n01440764_tench.jpg") == 0
    assert label_of("998_n13133613_ear.jpg") == 998
    assert label_of("rocket.jpg") is None and label_of("2024.jpg") is None
    assert [p.name for p in list_images(folder)] == ["001_cat.jpg", "003_coffee.jpg", "rocket.jpg"]
    assert parse_methods("fusion, gradcam,fusion") == ["fusion", "gradcam"]
    assert parse_metrics("insertion,AD, road,ad") == ["ad", "insertion", "road"]
    assert default_metrics("cpu") == ["ad", "ic", "deletion", "insertion"]
    assert default_metrics("cuda:1") == ["ad", "ic", "deletion", "insertion", "road"]
    with pytest.raises(ValueError, match="unknown metric pointing"):
        parse_metrics("ad,pointing")


def test_three_images_give_json_and_table(folder: Path, tmp_path: Path, tiny_cli: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "r.json"
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr()
    data = json.loads(out.read_text())
    methods = ["gradcam", "layercam", "scorecam", "fusion", "denoised"]
    assert data["config"]["methods"] == methods and data["config"]["steps"] == 6
    assert data["config"]["metrics"] == ["ad", "ic", "deletion", "insertion"]          # no ROAD on the CPU
    assert data["environment"]["world_size"] == 1
    assert [r["file"] for r in data["images"]] == ["001_cat.jpg", "003_coffee.jpg", "rocket.jpg"]
    for record in data["images"]:
        assert record["rank"] == 0
        assert record["correct"] == (None if record["label"] is None else record["label"] == record["target"])
        assert set(record["methods"]) == set(methods)
        for values in record["methods"].values():
            assert 0 <= values["deletion"] <= 1 and 0 <= values["insertion"] <= 1
            assert len(values["deletion_curve"]) == len(values["insertion_curve"]) == 7
            assert values["seconds"] > 0 and math.isfinite(values["drop"])
    summary = data["summary"]
    assert summary["images"] == 3 and summary["labelled"] == 2
    y = [r["probability"] for r in data["images"]]
    o = [r["methods"]["fusion"]["masked_probability"] for r in data["images"]]
    expected_drop = 100 * sum(max(0.0, a - b) / a for a, b in zip(y, o, strict=True)) / 3
    assert summary["methods"]["fusion"]["average_drop"] == pytest.approx(expected_drop)
    results, card = printed.out.split("| Protocol | Setting |")
    table = [line for line in results.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(methods)
    assert table[0].startswith("| Method | Average Drop") and "Seconds / image" in table[0]
    assert any(row.startswith("| Fusion-CAM |") for row in table)
    assert f"{summary['methods']['fusion']['deletion']:.4f}" in printed.out
    assert "3/3" in printed.err                                  # the progress bar (tqdm)
    assert "| Masking baseline |" in card and "ROAD" not in printed.out


def test_metrics_choose_the_record_keys_the_columns_and_the_card(folder: Path, tmp_path: Path, tiny_cli: list[str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", str(folder), "--out", str(out), "--steps", "6", "--methods", "gradcam,fusion",
                     "--metrics", "road,ad", "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["config"]["metrics"] == ["ad", "road"]
    values = data["images"][0]["methods"]["fusion"]
    assert set(values) == {"masked_probability", "drop", "road_morf", "road_lerf", "road", "seconds",
                           "road_morf_curve", "road_lerf_curve"}
    assert values["road"] == pytest.approx((values["road_lerf"] - values["road_morf"]) / 2)
    assert len(values["road_morf_curve"]) == len(values["road_lerf_curve"]) == 9
    header = next(line for line in printed.splitlines() if line.startswith("| Method"))
    assert header == "| Method | Average Drop (%) ↓ | ROAD MoRF ↓ | ROAD LeRF ↑ | ROAD ↑ | Seconds / image |"
    assert f"{data['summary']['methods']['fusion']['road']:.4f}" in printed
    assert "| ROAD | percentiles 10, 20" in printed                  # the protocol card states ROAD's settings


def test_rerun_resumes_where_it_stopped(folder: Path, tmp_path: Path, tiny_cli: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", str(folder), "--out", str(out), "--limit", "1", *FAST]) == 0
    first = json.loads(out.read_text())["images"][0]
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST]) == 0
    data = json.loads(out.read_text())
    assert tiny_cli == ["001_cat.jpg", "003_coffee.jpg", "rocket.jpg"]   # the first image was not redone
    assert len(data["images"]) == data["summary"]["images"] == 3 and data["images"][0] == first
    assert "1 of 3 images already done" in capsys.readouterr().err
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST]) == 0
    assert len(tiny_cli) == 3


def test_interrupt_keeps_finished_images(folder: Path, tmp_path: Path, tiny_cli: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.json"
    spy = evaluation.evaluate_image

    def interrupt_on_second(model, path, *args, **kwargs):
        if path.name == "003_coffee.jpg":
            raise KeyboardInterrupt
        return spy(model, path, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_image", interrupt_on_second)
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST]) == 130
    assert [r["file"] for r in json.loads(out.read_text())["images"]] == ["001_cat.jpg"]
    assert not list(tmp_path.glob(".r.json.*"))                   # no temporary file left behind


def test_unreadable_image_is_skipped(folder: Path, tmp_path: Path, tiny_cli: list[str]) -> None:
    (folder / "002_broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST]) == 0
    data = json.loads(out.read_text())
    assert data["summary"]["images"] == 3 and data["summary"]["failed"] == 1
    assert "error" in next(r for r in data["images"] if r["file"] == "002_broken.jpg")


@pytest.mark.parametrize("arguments, message", [
    (["{missing}"], "No such folder"),
    (["{empty}"], "No image files"),
    (["{folder}", "--methods", "gradcam,magic"], "unknown method magic"),
    (["{folder}", "--metrics", "ad,pointing"], "unknown metric pointing"),
    (["{folder}", "--steps", "0"], "--steps must be"),
    (["{folder}", "--theta", "120"], "theta"),
])
def test_bad_input_is_one_line_and_exit_2(arguments: list[str], message: str, folder: Path, tmp_path: Path,
                                          tiny_cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "folder": folder}
    argv = ["evaluate", *(a.format(**paths) for a in arguments), "--out", str(tmp_path / "r.json")]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "r.json").exists()


def test_other_settings_refuse_to_mix(folder: Path, tmp_path: Path, tiny_cli: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", str(folder), "--out", str(out), "--limit", "1", *FAST]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST[:-2], "--methods", "gradcam"]) == 2
    assert "other settings (methods)" in capsys.readouterr().err
    out.write_text("{ not json")
    assert cli.main(["evaluate", str(folder), "--out", str(out), *FAST]) == 2


@pytest.mark.slow
def test_bundled_model_one_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(ASSETS / "cat.jpg", images / "285_cat.jpg")            # 285: Egyptian cat
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", str(images), "--out", str(out), "--steps", "4", "--methods", "gradcam,layercam",
                     "--device", "cpu"]) == 0
    record = json.loads(out.read_text())["images"][0]
    assert record["correct"] is True and record["class_name"] == "Egyptian cat"
    assert "| LayerCAM |" in capsys.readouterr().out
