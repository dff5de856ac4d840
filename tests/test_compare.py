"""Two explanations side by side: the record's numbers by hand, the geometry of models that see
different parts of the image, the difference's picture and the files a comparison writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image

from fusioncam import Explanation, LoadedModel, compare, explain
from fusioncam.compare import EXPLANATIONS, RECORD_KEYS, default_classes, explain_pair, iou_top, resample, spearman
from fusioncam.export import write_comparison, write_explanation
from fusioncam.images import Geometry
from fusioncam.metrics import score_maps
from fusioncam.render import OUTSIDE_DIM, colour_table, difference_legend, difference_overlay


def tiny(geometry: Geometry | None = None, seed: int = 0, name: str = "tiny") -> LoadedModel:
    return LoadedModel.from_module(TinyNet(seed=seed), name=name, input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                                   std=(0.25, 0.25, 0.25), class_names=[f"c{i}" for i in range(5)],
                                   default_layer="features", geometry=geometry or Geometry())


def with_fusion(explanation: Explanation, fusion: np.ndarray) -> Explanation:
    """The same explanation with its Fusion-CAM map replaced by ``fusion``."""
    return Explanation(explanation.model, explanation.evidence, explanation.params,
                       {**explanation.maps, "fusion": fusion.astype(np.float32)}, explanation.report)


@pytest.fixture
def square_image(tiny_image: np.ndarray) -> np.ndarray:
    """A 32×32 image: the tiny model's own input grid, so no resampling happens."""
    return tiny_image[:32, :32]


def test_spearman_by_hand_with_ties_and_constant_maps() -> None:
    # ranks a = 0 1 2 3, b = ½ ½ 2½ 2½ (ties share their mean): centred (−1.5 −.5 .5 1.5)·(−1 −1 1 1) = 4,
    # |a|² = 5, |b|² = 4 → ρ = 4 / √20
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 1, 2, 2])) == pytest.approx(4 / np.sqrt(20))
    assert spearman(np.arange(5.0), np.arange(5.0)[::-1]) == pytest.approx(-1)
    assert spearman(np.arange(5.0), np.exp(np.arange(5.0))) == pytest.approx(1)
    assert spearman(np.arange(5.0), np.full(5, 0.3)) == 0.0


def test_iou_of_the_top_20_percent_by_hand() -> None:
    values = np.arange(10.0)                 # 80th percentile (linear) 7.2: pixels 8, 9
    assert iou_top(values, values) == 1.0
    assert iou_top(values, np.roll(values, 1)) == pytest.approx(1 / 3)   # b's top pixels: 9 and 0
    assert iou_top(values, values[::-1]) == 0.0


def test_resample_is_bilinear_between_pixel_centres_and_zero_outside_the_source() -> None:
    values = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    same, inside = resample(values, (0, 0, 2, 2), (0, 0, 2, 2), (2, 2))
    assert np.array_equal(same, values) and inside.all()
    finer, _ = resample(values, (0, 0, 2, 2), (0, 0, 2, 2), (4, 4))   # centres at ¼ ¾ 1¼ 1¾ → ·, ¼, ¾, ·
    assert np.allclose(finer[0], [0, 0.25, 0.75, 1]) and np.allclose(finer[:, 0], [0, 0.5, 1.5, 2])
    half, inside = resample(values, (1, 0, 2, 2), (0, 0, 2, 2), (2, 4))   # the source covers the right half
    assert inside[:, 2:].all() and not inside[:, :2].any()
    assert np.array_equal(half[:, :2], np.zeros((2, 2))) and np.allclose(half[0, 2:], [0, 1])


def test_two_ramps_give_the_difference_correlation_and_overlap_by_hand(tiny_model: LoadedModel,
                                                                       square_image: np.ndarray) -> None:
    base = explain(tiny_model, square_image)
    ramp = np.tile(np.arange(32) / 31, (32, 1))
    result = compare(with_fusion(base, ramp), with_fusion(base, ramp.T))
    assert result.difference.dtype == np.float32 and result.difference.shape == (32, 32)
    assert np.allclose(result.difference, ramp - ramp.T, atol=1e-6)
    assert result.record["spearman"] == pytest.approx(0, abs=1e-12)   # columns and rows are unrelated
    # 1024 values, 32 levels 32 times each: the 80th percentile is level 25 → columns 25…31 and rows 25…31
    assert result.record["iou_top20"] == pytest.approx(49 / (2 * 7 * 32 - 49))
    assert result.record["shared_region"] == 1.0
    constant = compare(with_fusion(base, ramp), with_fusion(base, np.full((32, 32), 0.5)))
    assert constant.record["spearman"] == 0.0 and np.allclose(constant.difference, ramp)


def test_identical_explanations_agree_fully_and_cross_drop_equals_own(tiny_model: LoadedModel,
                                                                      tiny_image: np.ndarray) -> None:
    explanation = explain(tiny_model, tiny_image)
    result = compare(explanation, explanation)
    assert list(result.record) == list(RECORD_KEYS)
    assert result.record["spearman"] == pytest.approx(1) and result.record["iou_top20"] == 1.0
    assert not result.difference.any() and result.difference.shape == (40, 48)
    assert result.record["cross_average_drop_a"] == pytest.approx(result.record["average_drop_a"])
    assert result.record["cross_average_drop_b"] == pytest.approx(result.record["average_drop_b"])
    json.dumps(result.record)
    assert result.explanations == (explanation, explanation)


def test_average_drop_is_the_faithfulness_metric_of_each_side(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp_a = explain(tiny_model, tiny_image)
    exp_b = explain(tiny_model, tiny_image, target=(exp_a.evidence.target + 1) % 5)
    result = compare(exp_a, exp_b)
    for key, own, other in (("a", exp_a, exp_b), ("b", exp_b, exp_a)):
        e = own.evidence
        scores = score_maps(tiny_model, e.x, {"own": own.maps["fusion"], "cross": other.maps["fusion"]}, e.target,
                            e.baseline, 1)
        assert result.record[f"average_drop_{key}"] == pytest.approx(100 * scores["own"].drop, abs=1e-4)
        assert result.record[f"cross_average_drop_{key}"] == pytest.approx(100 * scores["cross"].drop, abs=1e-4)


def test_a_crop_geometry_compares_on_the_shared_region_only(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    cropping = tiny(Geometry("shorter", (36, 36)), seed=2, name="tiny-crop")
    exp_a, exp_b = explain(tiny_model, tiny_image), explain(cropping, tiny_image)
    with pytest.raises(ValueError, match=r"image=\.\.\."):
        compare(exp_a, exp_b)
    result = compare(exp_a, exp_b, image=tiny_image)
    # 48×40 → shorter side 36: 43×36, centre 32×32 at (6, 2) → (7, 2, 42, 38) of the original
    assert result.boxes == ((0, 0, 48, 40), (7, 2, 42, 38))
    assert result.record["shared_region"] == pytest.approx(35 * 36 / (48 * 40)) and result.record["shared_region"] < 1
    assert not result.difference[~result.shared].any() and result.shared[2:38, 7:42].all()
    assert result.difference[result.shared].min() < 0 < result.difference[result.shared].max()
    on_b, seen_b = result.on_image(1)
    assert not on_b[~seen_b].any() and seen_b.sum() == 35 * 36
    other = np.ascontiguousarray(tiny_image[::-1])
    with pytest.raises(ValueError, match=r"^side A: .*not made from this"):
        compare(exp_a, exp_b, image=other)


def test_the_cross_map_is_zero_where_the_other_model_never_looked(tiny_model: LoadedModel,
                                                                  tiny_image: np.ndarray) -> None:
    cropping = tiny(Geometry("shorter", (36, 36)), seed=2, name="tiny-crop")
    exp_a, exp_b = explain(tiny_model, tiny_image), explain(cropping, tiny_image)
    everywhere = with_fusion(exp_b, np.ones((32, 32)))   # B highlights everything it saw
    result = compare(exp_a, everywhere, image=tiny_image)
    seen_by_b, inside = resample(np.ones((32, 32)), (7, 2, 42, 38), (0, 0, 48, 40), (32, 32))
    e = exp_a.evidence
    scores = score_maps(tiny_model, e.x, {"cross": seen_by_b}, e.target, e.baseline, 1)
    assert 0 < inside.mean() < 1 and np.array_equal(seen_by_b, inside.astype(np.float32))
    assert result.record["cross_average_drop_a"] == pytest.approx(100 * scores["cross"].drop, abs=1e-4)


def test_default_classes_are_a_top1_and_b_second_or_its_own_top1(tiny_model: LoadedModel) -> None:
    logits = torch.tensor([0.1, 3.0, 2.0, -1.0, 0.5])
    assert default_classes(tiny_model, tiny_model, logits) == (1, 2)
    assert default_classes(tiny_model, tiny(), logits) == (1, 2)          # same name: the same model
    assert default_classes(tiny_model, tiny_model, logits, class_a=2) == (2, 1)
    other = tiny(name="other")
    assert default_classes(tiny_model, other, logits, torch.tensor([0.0, 0, 0, 0, 9])) == (1, 4)
    with pytest.raises(ValueError, match="logits"):
        default_classes(tiny_model, other, logits)


def test_explain_pair_defaults_and_bad_input_naming_the_side(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp_a, exp_b = explain_pair(tiny_image, tiny_model, tiny_model, strength=2.0)
    order = torch.argsort(exp_a.evidence.logits, descending=True).tolist()
    assert (exp_a.evidence.target, exp_b.evidence.target) == (order[0], order[1])
    assert exp_a.params.strength == exp_b.params.strength == 2.0
    with pytest.raises(ValueError, match=r"^side B: class 7 is out of range"):
        explain_pair(tiny_image, tiny_model, tiny_model, class_b=7)
    with pytest.raises(ValueError, match=r"^side A: .*no layer named 'nope'"):
        explain_pair(tiny_image, tiny_model, tiny_model, layer_a="nope")


def test_difference_overlay_colours_a_red_b_blue_and_dims_what_was_not_compared() -> None:
    image = Image.new("RGB", (4, 2), (200, 200, 200))
    difference = np.array([[1, -1, 0, 1], [1, 1, 1, 1]], dtype=np.float32)
    shared = np.array([[True, True, True, False], [True, True, True, True]])
    picture = difference_overlay(image, difference, 1.0, shared)
    table = colour_table("difference")
    assert np.array_equal(picture[0, 0], table[255]) and np.array_equal(picture[0, 1], table[0])
    assert picture[0, 0, 0] > picture[0, 0, 2] and picture[0, 1, 2] > picture[0, 1, 0]   # red for A, blue for B
    assert np.array_equal(picture[0, 3], [int(200 * OUTSIDE_DIM)] * 3)
    legend = difference_legend(300, "A (lite0)", "B (lite2)")
    assert legend.shape[1] == 300 and legend.dtype == np.uint8


def test_a_comparison_writes_both_sides_as_explain_does_and_one_page(tmp_path: Path, tiny_model: LoadedModel,
                                                                    tiny_image: np.ndarray) -> None:
    cropping = tiny(Geometry("shorter", (36, 36)), seed=2, name="tiny-crop")
    result = compare(explain(tiny_model, tiny_image), explain(cropping, tiny_image), image=tiny_image)
    out = tmp_path / "out"
    write_comparison(result, out, html_report=True, command="python -m fusioncam compare x.png --out out")
    single = tmp_path / "single"
    write_explanation(result.explanations[0], single, html_report=True)
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "compare.html", "compare.json", "difference.npy",
                                                    "difference.png"]
    assert np.array_equal(np.load(out / "difference.npy"), result.difference)
    assert json.loads((out / "compare.json").read_text()) == result.record
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert all(src.startswith("data:image/jpeg;base64,") for src in re.findall(r'\bsrc="([^"]*)"', page))
    assert len(re.findall(r"<img\b", page)) == 4 + 2 * 7
    ids = re.findall(r'\bid="?([\w-]+)', page)
    assert len(ids) == len(set(ids)) and {"a-top5", "b-top5", "record"} <= set(ids)
    for key in RECORD_KEYS:
        assert f'data-record="{key}" data-value="{json.dumps(result.record[key])}"' in page
        assert EXPLANATIONS[key].replace("'", "&#x27;") in page
    write_comparison(result, out)                      # a second run replaces a/ and b/ whole
    assert not (out / "a" / "report.html").exists()
