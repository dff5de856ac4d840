"""The Explanation pipeline on a tiny deterministic model: contract, hooks, batching, re-fusion."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fusioncam import MAP_NAMES, LoadedModel, ModelError, explain
from fusioncam.explain import FusionParams, capture_evidence, derive, gradient_preview, score_regions
from fusioncam.images import load_image


def hook_count(module: nn.Module) -> int:
    """Every forward/backward hook registered on any submodule."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in module.modules())


def test_maps_and_report_follow_the_contract(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image)
    assert set(exp.maps) == set(MAP_NAMES)
    for name, array in exp.maps.items():
        assert array.dtype == np.float32 and array.shape == (32, 32), name
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1, name
    report = json.loads(json.dumps(exp.report))
    for key in ("model", "layer", "class_index", "class_name", "top5", "betas", "gammas", "warnings",
                "forward_passes", "timings"):
        assert key in report
    assert report["layer"] == "features" and report["class_index"] == report["top5"][0]["index"]
    assert report["class_name"] == tiny_model.class_names[report["class_index"]]


def test_zero_hooks_remain_and_model_state_is_restored(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    module = tiny_model.module
    module.train()
    module.stem.weight.requires_grad_(False)
    for _ in range(50):
        explain(tiny_model, tiny_image, region_method="scorecam-topk", top_k=2)
    assert hook_count(module) == 0
    assert module.training
    assert not module.stem.weight.requires_grad and module.features.weight.requires_grad


def test_zero_hooks_remain_after_an_exception_inside_explain(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    class Boom(RuntimeError):
        pass

    def explode(*_args: object) -> None:
        raise Boom

    handle = tiny_model.module.fc.register_forward_hook(explode)   # fails after the target layer ran
    with pytest.raises(Boom):
        explain(tiny_model, tiny_image)
    handle.remove()
    assert hook_count(tiny_model.module) == 0
    assert all(p.requires_grad for p in tiny_model.module.parameters())


def test_in_place_activation_after_the_layer_does_not_corrupt_the_evidence(tiny_model: LoadedModel,
                                                                           tiny_image: np.ndarray) -> None:
    """TinyNet applies ReLU(inplace=True) to the target layer's output: A must keep its negatives."""
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)])
    module = tiny_model.module
    x = evidence.x[None]
    with torch.no_grad():
        expected = module.features(module.act(module.stem(x)))
    assert (expected < 0).any()
    torch.testing.assert_close(evidence.activations, expected[0])


def test_gradients_match_autograd_on_the_plain_module(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    [evidence] = capture_evidence(tiny_model, [load_image(tiny_image)], target=3)
    module = tiny_model.module
    a = module.features(module.act(module.stem(evidence.x[None]))).detach().requires_grad_(True)
    logit = module.fc(module.pool(torch.relu(a)).flatten(1))[0, 3]
    (grad,) = torch.autograd.grad(logit, a)
    torch.testing.assert_close(evidence.gradients, grad[0])


def test_batch_equals_one_by_one(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    second = np.ascontiguousarray(tiny_image[::-1, ::-1])
    batch = explain(tiny_model, [tiny_image, second], target=[1, None], chunk_size=3)
    alone = [explain(tiny_model, tiny_image, target=1), explain(tiny_model, second)]
    for together, single in zip(batch, alone, strict=True):
        assert together.report["class_index"] == single.report["class_index"]
        for name in MAP_NAMES:
            np.testing.assert_allclose(together.maps[name], single.maps[name], atol=1e-5, err_msg=name)
        # float32 sums in another batch composition differ in the last bits: ~1e-6 apart was seen on an AMD EPYC
        assert together.report["betas"] == pytest.approx(single.report["betas"], abs=1e-5)


def test_flat_channel_sharing_equals_scoring_every_channel(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    image = load_image(tiny_image)
    [evidence] = capture_evidence(tiny_model, [image])
    activations = evidence.activations.clone()
    activations[2] = 0.0          # make sure some channels are flat
    activations[5] = 1.5
    evidence = replace(evidence, activations=activations)
    [shared] = score_regions(tiny_model, [evidence], share_flat=True)
    [unshared] = score_regions(tiny_model, [evidence], share_flat=False)
    assert shared.masked_passes == unshared.masked_passes - 2
    torch.testing.assert_close(shared.region_scores, unshared.region_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.region_map(), unshared.region_map(), atol=1e-6, rtol=0)


def test_strength_and_weight_mode_changes_run_no_network(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image)
    before = tiny_model.forwarded_images
    stronger = exp.refuse(strength=4.0)
    assert tiny_model.forwarded_images == before
    assert not np.array_equal(stronger.maps["agreement"], exp.maps["agreement"])
    exp.refuse(weights="normalized")
    assert tiny_model.forwarded_images == before
    # On this input β_den + β_reg > 0, so raw's β̂ are a positive rescale of the same combined map: no
    # forward (the negative case, which needs one, is tests/test_fusion.py's negative-scale test).
    assert exp.report["betas"]["denoised"] + exp.report["betas"]["region"] > 0
    exp.refuse(weights="raw")
    assert tiny_model.forwarded_images == before
    exp.refuse(theta=35)
    assert tiny_model.forwarded_images - before <= 2          # denoised + combined
    np.testing.assert_array_equal(exp.refuse(theta=35).maps["fusion"], exp.refuse(theta=35).maps["fusion"])


def test_refuse_equals_a_fresh_explanation(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    first = explain(tiny_model, tiny_image).refuse(theta=30, strength=2.5, weights="raw", gradient_method="layercam")
    fresh = explain(tiny_model, tiny_image, theta=30, strength=2.5, weights="raw", gradient_method="layercam")
    for name in MAP_NAMES:
        np.testing.assert_allclose(first.maps[name], fresh.maps[name], atol=1e-6)


def test_staged_api_matches_explain(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    evidences = capture_evidence(tiny_model, [load_image(tiny_image)])
    preview = gradient_preview(evidences[0], theta=10)
    progress: list[tuple[int, int]] = []
    regions = score_regions(tiny_model, evidences, chunk_size=3,
                            progress=lambda done, total: progress.append((done, total)))
    [staged] = derive(tiny_model, regions, FusionParams())
    whole = explain(tiny_model, tiny_image)
    np.testing.assert_allclose(preview["gradcam"], whole.maps["gradcam"])
    np.testing.assert_allclose(preview["denoised"], whole.maps["denoised"])
    np.testing.assert_allclose(staged.maps["fusion"], whole.maps["fusion"], atol=1e-6)
    assert progress and progress[-1][0] == progress[-1][1] == regions[0].masked_passes


@pytest.mark.parametrize("baseline", ["mean", "black", "blur"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam"])
def test_every_baseline_and_gradient_method_gives_valid_maps(tiny_model: LoadedModel, tiny_image: np.ndarray,
                                                             baseline: str, method: str) -> None:
    exp = explain(tiny_model, tiny_image, baseline=baseline, gradient_method=method)
    assert exp.report["params"]["baseline"] == baseline
    for array in exp.maps.values():
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


def test_top_k_mode_scores_only_k_channels(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image, region_method="scorecam-topk", top_k=3)
    scores = exp.evidence.region_scores
    assert int(torch.isfinite(scores).sum()) == 3 and exp.report["forward_passes"]["masked"] <= 3
    assert exp.report["params"]["top_k"] == 3


def test_baseline_is_the_dataset_mean_colour_by_default(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    exp = explain(tiny_model, tiny_image)
    assert torch.equal(exp.evidence.baseline, torch.zeros(3, 32, 32))
    black = explain(tiny_model, tiny_image, baseline="black").evidence.baseline
    torch.testing.assert_close(black[:, 0, 0], torch.full((3,), -0.5 / 0.25))


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 5}, "out of range"),
    ({"target": -1}, "out of range"),
    ({"layer": "nope"}, "no layer named"),
    ({"layer": "fc"}, "4-D feature map"),
    ({"weights": "softmax"}, "weights mode"),
    ({"baseline": "white"}, "baseline"),
    ({"theta": 150}, "percentile"),
    ({"strength": -1}, "strength"),
    ({"gradient_method": "eigencam"}, "gradient method"),
])
def test_bad_arguments_are_plain_errors(tiny_model: LoadedModel, tiny_image: np.ndarray, kwargs: dict,
                                        message: str) -> None:
    with pytest.raises((ValueError, ModelError, RuntimeError), match=message):
        explain(tiny_model, tiny_image, **kwargs)
    assert hook_count(tiny_model.module) == 0


def test_negative_betas_give_finite_maps_and_a_warning(tiny_image: np.ndarray) -> None:
    """A model that scores the class *higher* on the baseline than on any masked image."""

    class Inverted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3, stride=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            energy = self.features(x).abs().mean(dim=(1, 2, 3))
            return torch.stack([-energy, energy], dim=1)

    model = LoadedModel.from_module(Inverted(), input_size=(32, 32), class_names=["low", "high"],
                                    default_layer="features")
    exp = explain(model, tiny_image, target=0)
    assert all(np.isfinite(m).all() for m in exp.maps.values())
    assert any("Unreliable weights" in w for w in exp.report["warnings"])
