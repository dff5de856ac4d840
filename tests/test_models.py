"""The model registry: the bundled offline model, hub specs, layers."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fusioncam import LoadedModel, ModelError, load_model
from fusioncam import models as registry
from fusioncam.images import load_image, normalize_image, resize_for_model


def test_bundled_model_is_efficientnet_lite0_with_real_weights(bundled_model: LoadedModel, cat_path) -> None:
    assert bundled_model.name == "efficientnet_lite0" and bundled_model.default_layer == "bn2"
    assert bundled_model.mean == bundled_model.std == (0.5, 0.5, 0.5) and bundled_model.input_size == (224, 224)
    assert len(bundled_model.class_names) == 1000 and bundled_model.class_names[285] == "Egyptian cat"
    assert sum(p.numel() for p in bundled_model.module.parameters()) == pytest.approx(4.69e6, rel=0.01)
    x = normalize_image(resize_for_model(load_image(cat_path), (224, 224)), (0.5,) * 3, (0.5,) * 3)
    with torch.inference_mode():
        probs = torch.softmax(bundled_model.module(x[None]), 1)[0]
    assert int(probs.argmax()) == 285 and float(probs[285]) > 0.5


def test_candidate_layers_are_spatial_and_resolvable(bundled_model: LoadedModel) -> None:
    layers = bundled_model.candidate_layers()
    assert layers[-1] == "bn2" and "conv_stem" in layers and "global_pool" not in layers
    name, module = bundled_model.resolve_layer("blocks.5")
    assert name == "blocks.5" and isinstance(module, nn.Module)


def test_default_layer_of_an_unknown_architecture_is_found_by_a_dummy_forward() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    model = LoadedModel.from_module(module, input_size=(20, 20), class_names=["a", "b", "c"])
    assert model.default_layer == "3"          # the last spatial output before global pooling
    assert model.candidate_layers() == ["0", "1", "2", "3"]


@pytest.mark.parametrize("spec", ["resnet50", "timm:", "keras:resnet50", "torchvision:not_a_model",
                                  "timm:not_a_model_either", 42])
def test_unknown_models_are_plain_errors(spec: object) -> None:
    with pytest.raises(ModelError):
        load_model(spec)  # type: ignore[arg-type]


def test_random_weight_hub_models_load_offline() -> None:
    model = load_model("torchvision:resnet18", pretrained=False, device="cpu")
    assert model.default_layer == "layer4" and model.class_names[0] == "tench"
    assert load_model("timm:resnet18", pretrained=False, device="cpu").default_layer == "layer4"


def test_uncached_hub_weights_fail_offline_naming_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the failure says; how fast it comes is measured by benchmarks/offline_failure.py."""
    monkeypatch.setattr(registry, "_reachable", lambda host, timeout=3.0: False)
    for spec in ("timm:resnet18", "torchvision:resnet18"):
        with pytest.raises(ModelError, match=re.escape(spec)) as error:
            load_model(spec)
        assert "offline" in str(error.value)


def test_layer_errors_name_the_candidates(bundled_model: LoadedModel) -> None:
    with pytest.raises(ModelError, match=r"no layer named 'blocks\.99'.*bn2"):
        bundled_model.resolve_layer("blocks.99")
    with pytest.raises(ModelError, match="non-empty string"):
        bundled_model.resolve_layer("")


def test_hub_models_over_the_parameter_limit_are_refused_before_any_download(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_require_download", lambda *_: pytest.fail("tried to download"))
    with pytest.raises(ModelError, match="has 61 M parameters, more than the limit of 50 M"):
        load_model("torchvision:alexnet", max_parameters=50_000_000)
    assert load_model("torchvision:alexnet", pretrained=False, max_parameters=100_000_000).name == "torchvision:alexnet"
