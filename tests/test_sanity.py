"""The model-parameter randomisation check (METHOD.md "Sanity check") on tiny models, and its CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fusioncam import LoadedModel, cli, explain, load_image, sanity_cli
from fusioncam.fusion import normalize
from fusioncam.sanity import (
    NORMAL_STD,
    randomization_steps,
    randomize,
    randomized_models,
    sanity_check,
    spearman,
    ssim,
)


def image_only(evidence) -> torch.Tensor:
    """A test-only "method": the input's brightness, which no weight can change."""
    return normalize(evidence.x.mean(0))


def test_spearman_ranks_pixels_and_gives_zero_for_a_constant_map() -> None:
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    assert spearman(ramp, ramp ** 3) == pytest.approx(1.0)          # any increasing transform
    assert spearman(ramp, 1 - ramp) == pytest.approx(-1.0)
    assert spearman(ramp, np.zeros((8, 8))) == 0.0 and spearman(np.ones((8, 8)), np.ones((8, 8))) == 0.0
    ties = np.array([0.0, 0.0, 1.0, 2.0])
    assert spearman(ties, np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4],
                                                                                      [1, 2, 3, 4])[0, 1])


def test_ssim_is_one_for_equal_maps_and_low_for_unrelated_ones() -> None:
    generator = np.random.default_rng(0)
    a, b = generator.random((32, 32)), generator.random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.2
    assert ssim(a, np.clip(a + 0.02, 0, 1)) > 0.9


class Backwards(nn.Module):
    """Registers its head first and its body (a Sequential of 3 convs) last: the steps must follow
    the forward order, not the registration order, and open the body (fewer than 8 steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                  nn.Conv2d(4, 4, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.body(x))
        return self.head(features.mean(dim=(2, 3)))


@pytest.fixture
def backwards() -> LoadedModel:
    torch.manual_seed(123)
    model = LoadedModel.from_module(Backwards(), name="backwards", input_size=(16, 16), class_names=["a", "b", "c"],
                                    default_layer="body.3")
    with torch.no_grad():
        model.module.norm.weight.fill_(3.0)
        model.module.norm.running_mean.fill_(0.5)
    return model


def test_steps_are_the_head_then_blocks_in_reverse_forward_order(tiny_model: LoadedModel,
                                                                 backwards: LoadedModel) -> None:
    assert randomization_steps(tiny_model) == ["fc", "features", "stem"]
    assert randomization_steps(backwards) == ["head", "norm", "body.3", "body.2", "body.0"]


def test_randomize_uses_reset_parameters_and_a_normal_init_for_the_rest(backwards: LoadedModel) -> None:
    module = backwards.module
    randomize(module.norm, seed=3)
    assert torch.equal(module.norm.weight, torch.ones(4)) and torch.equal(module.norm.running_mean, torch.zeros(4))
    scale = nn.Module()
    scale.weight = nn.Parameter(torch.ones(10_000))
    randomize(scale, seed=3)
    assert float(scale.weight.detach().std()) == pytest.approx(NORMAL_STD, rel=0.05)
    first, second = nn.Linear(5, 5), nn.Linear(5, 5)
    randomize(first, 7)
    randomize(second, 7)
    assert torch.equal(first.weight, second.weight)              # the seed fixes the weights
    state = torch.random.get_rng_state()
    randomize(first, 8)
    assert torch.equal(torch.random.get_rng_state(), state)      # the global generator is left alone


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_randomised_copies_change_only_their_steps(backwards: LoadedModel, mode: str) -> None:
    original = {k: v.clone() for k, v in backwards.module.state_dict().items()}
    steps = randomization_steps(backwards)
    for index, (step, twin) in enumerate(randomized_models(backwards, steps, mode, seed=0)):
        assert twin.module is not backwards.module and step == steps[index]
        state = twin.module.state_dict()
        for key, value in original.items():
            randomised = steps[:index + 1] if mode == "cascading" else [step]
            inside = any(key.startswith(f"{name}.") for name in randomised)
            if not inside and not key.endswith("num_batches_tracked"):
                assert torch.equal(state[key], value), (step, key)
        changed = [key for key in original if key.startswith(f"{step}.") and not torch.equal(state[key], original[key])]
        assert changed, step
    for key, value in original.items():
        assert torch.equal(backwards.module.state_dict()[key], value), key


def test_a_model_dependent_map_falls_and_an_image_only_map_stays(tiny_model: LoadedModel,
                                                                 tiny_image: np.ndarray) -> None:
    module = tiny_model.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fractions: list[float] = []
    result = sanity_check(tiny_model, load_image(tiny_image), methods=["gradcam", "scorecam", "fusion"],
                          extra={"image": image_only}, progress=lambda fraction, _text: fractions.append(fraction))
    assert result.steps == ["fc", "features", "stem"]
    assert result.spearman["gradcam"][-1] < 0.5 and result.passed("gradcam")
    assert result.spearman["image"] == pytest.approx([1.0, 1.0, 1.0]) and not result.passed("image")
    assert result.ssim["image"] == pytest.approx([1.0, 1.0, 1.0])
    assert all(len(result.maps[m]) == 3 and len(result.spearman[m]) == 3 for m in ("gradcam", "scorecam", "fusion"))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # The loaded model is never touched: same weights, no gradients left, no hooks, same mode.
    for key, value in before.items():
        assert torch.equal(module.state_dict()[key], value), key
    assert all(p.grad is None for p in module.parameters())
    assert not module.training and sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()) == 0
    # The original target is kept for every step, whatever the randomised model predicts.
    again = sanity_check(tiny_model, load_image(tiny_image), target=(result.target + 1) % 5, methods=["gradcam"])
    assert again.target == (result.target + 1) % 5
    with pytest.raises(ValueError, match="unknown sanity-check method"):
        sanity_check(tiny_model, load_image(tiny_image), methods=["eigencam"])
    with pytest.raises(ValueError, match="randomisation mode"):
        sanity_check(tiny_model, load_image(tiny_image), mode="sideways")


def test_independent_mode_and_determinism(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    image = load_image(tiny_image)
    first = sanity_check(tiny_model, image, methods=["gradcam", "layercam"], mode="independent", seed=4)
    second = sanity_check(tiny_model, image, methods=["gradcam", "layercam"], mode="independent", seed=4)
    assert first.spearman == second.spearman and first.ssim == second.ssim
    cascading = sanity_check(tiny_model, image, methods=["gradcam"], seed=4)
    assert cascading.spearman["gradcam"][0] == first.spearman["gradcam"][0]     # step 1 is the same in both
    assert json.loads(json.dumps(first.to_json()))["methods"]["layercam"]["steps"] == ["fc", "features", "stem"]


def test_cli_writes_json_and_png(tiny_model: LoadedModel, tiny_image: np.ndarray, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sanity_cli, "load_model", lambda spec, device="auto": tiny_model)
    picture = tmp_path / "tiny.png"
    Image.fromarray(tiny_image).save(picture)
    out = tmp_path / "out"
    assert cli.main(["sanity", str(picture), "--methods", "gradcam,layercam", "--out", str(out)]) == 0
    data = json.loads((out / "sanity.json").read_text())
    assert set(data["methods"]) == {"gradcam", "layercam"} and data["mode"] == "cascading"
    for record in data["methods"].values():
        assert record["steps"] == ["fc", "features", "stem"]
        assert len(record["spearman"]) == len(record["ssim"]) == 3
    with Image.open(out / "sanity.png") as png:
        assert png.width > 400 and png.height > 300
    assert "gradcam" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["missing.jpg"], "No such image file"),
    (["IMAGE", "--methods", "gradcam,nope"], "unknown sanity-check method"),
    (["IMAGE", "--mode", "sideways"], "invalid choice"),
    (["IMAGE", "--class", "9"], "out of range"),
    (["IMAGE", "--layer", "nope"], "no layer named"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(tiny_model: LoadedModel, tiny_image: np.ndarray, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                   arguments: list[str], message: str) -> None:
    monkeypatch.setattr(sanity_cli, "load_model", lambda spec, device="auto": tiny_model)
    picture = tmp_path / "tiny.png"
    Image.fromarray(tiny_image).save(picture)
    argv = ["sanity", *(str(picture) if a == "IMAGE" else str(tmp_path / a) if a.endswith(".jpg") else a
                        for a in arguments), "--out", str(tmp_path / "out")]
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


# --- The "Sanity check" tab: its handler on a tiny model's explanation, and the page's wiring ---

class Recorder:
    """Stands in for ``gr.Progress``: keeps every ``(fraction, desc)`` it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []

    def __call__(self, fraction: object, desc: str = "", **_options: object) -> None:
        self.calls.append((fraction, desc))


def tab_session(model: LoadedModel, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """What the tab's handler reads from the ``gr.State`` value, for ``model``'s explanation of ``image``."""
    pytest.importorskip("gradio")
    from fusioncam.ui import handlers, trust

    monkeypatch.setattr(trust, "MODELS", SimpleNamespace(get=lambda spec: model))
    exp = explain(model, image)
    return SimpleNamespace(request=SimpleNamespace(model="tiny"), evidence=exp.evidence, params=exp.params,
                           maps=exp.maps, report=exp.report, colormap="jet", explanation=lambda _model: exp,
                           generation=handlers.GENERATIONS.begin(handlers.session_key(None)))


def test_the_tab_handler_says_which_maps_passed(tiny_model: LoadedModel, tiny_image: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fusioncam.ui import handlers, trust

    session = tab_session(tiny_model, tiny_image, monkeypatch)
    progress = Recorder()
    status, curves, picture = trust.sanity(session, ["gradcam", "fusion"], "cascading", None, progress)
    assert "Grad-CAM passed" in status and "Fusion-CAM" in status and "class" in status
    assert len(curves.data) == 4 and list(curves.data[0].y[:1]) == [1.0] and len(curves.data[0].y) == 4
    assert picture.ndim == 3 and picture.shape[2] == 3
    assert progress.calls[0] == (0, "Sanity check: reruns Score-CAM at every step…")   # the cost, said first
    assert "Score-CAM runs" in trust.sanity_cost(session, ["gradcam", "scorecam"])
    assert "Score-CAM" not in trust.sanity_cost(session, ["gradcam"])
    gr = pytest.importorskip("gradio")
    with pytest.raises(gr.Error, match="at least one map"):
        trust.sanity(session, [], "cascading", None, Recorder())
    with pytest.raises(gr.Error, match="Explain an image first"):
        trust.sanity(None, ["gradcam"], "cascading", None, Recorder())
    with pytest.raises(gr.Error, match="randomisation mode"):
        trust.sanity(session, ["gradcam"], "sideways", None, Recorder())
    handlers.GENERATIONS.begin(handlers.session_key(None))          # a newer explanation started meanwhile
    assert trust.sanity(session, ["gradcam"], "cascading", None, Recorder())[0] == trust.STALE_CHECK


@pytest.mark.slow
def test_the_page_has_the_sanity_tab_with_stable_ids() -> None:
    pytest.importorskip("gradio")
    import app

    config = app.demo.get_config_file()
    ids = {component.get("props", {}).get("elem_id") for component in config["components"]}
    assert {"sanity-run", "sanity-methods", "sanity-mode", "sanity-status", "sanity-curves", "sanity-strip"} <= ids
    labels = {component.get("props", {}).get("label") for component in config["components"]
              if component.get("type") == "tabitem"}
    assert "Sanity check" in labels
    assert any(d.get("api_name") == "sanity" for d in config["dependencies"])


def test_a_map_that_goes_blank_is_judged_where_it_last_showed_something() -> None:
    pytest.importorskip("gradio")
    from fusioncam.sanity import SanityResult
    from fusioncam.ui import trust

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    maps = {"gradcam": [ramp[::-1], ramp.T[::-1]], "fusion": [ramp, np.zeros((8, 8), np.float32)],
            "layercam": [ramp, ramp]}
    result = SanityResult(model="m", mode="cascading", seed=0, layer="l", target=1, steps=["head", "body"],
                          original={name: ramp for name in maps}, maps=maps,
                          spearman={name: [spearman(ramp, v) for v in values] for name, values in maps.items()},
                          ssim={name: [ssim(ramp, v) for v in values] for name, values in maps.items()}, seconds=1.0)
    words = trust.sanity_verdicts(result, "cat")
    assert "Grad-CAM passed**" in words and "LayerCAM did not pass" in words and "+1.00" in words
    # Fusion-CAM went blank at the last step: judged at step 1, where it still equalled the original.
    assert result.judged_step("fusion") == 1 and not result.passed("fusion")
    assert "Fusion-CAM did not pass" in words and "From step 2 on its map is blank" in words
    assert result.judged_step("gradcam") == 2 and result.passed("gradcam")
