"""The model registry: the bundled offline model, hub specs, layers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from fusioncam import LoadedModel, ModelError, load_model
from fusioncam import models as registry
from fusioncam.images import Geometry, load_image, normalize_image, resize_for_model


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
    useful = bundled_model.candidate_layers(useful=True)
    assert useful[-1] == "bn2" and "blocks.5" in useful and "bn2.act" in layers and "bn2.act" not in useful
    assert len(useful) <= 15 < len(layers)
    assert bundled_model.layer_shape("bn2").map_shape == (1280, 7, 7)


def test_layer_shapes_are_found_at_load_not_on_the_request_path(tiny_model: LoadedModel) -> None:
    """Candidate layers, their shapes and the default come from the forward at construction:
    asking for them later (e.g. the app's layer list in a request thread) runs no network."""
    forwards: list[int] = []
    handle = tiny_model.module.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        assert tiny_model.candidate_layers() == ["stem", "act", "features"]   # act: its first call
        assert tiny_model.layer_shape("features").map_shape == (8, 16, 16)
        tiny_model.resolve_layer(None)
        tiny_model.to("cpu")
        tiny_model.candidate_layers(useful=True)
    finally:
        handle.remove()
    assert forwards == []


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


def test_hub_preprocessing_is_the_libraries_own(cat_path) -> None:
    """timm's ``create_transform`` and torchvision's ``weights.transforms()`` give exactly our
    input, and the part of the photo they keep is what the maps are drawn over."""
    import timm
    from torchvision import models as tv_models

    image = load_image(cat_path)
    vit = load_model("timm:vit_tiny_patch16_224", pretrained=False, device="cpu")
    assert vit.default_layer == "blocks.11.norm1" and vit.geometry == Geometry("shorter", (248, 248), "bicubic")
    config = timm.data.resolve_data_config({}, model=vit.module)
    x, seen = vit.preprocess(image)
    torch.testing.assert_close(x, timm.data.create_transform(**config)(image), atol=1e-6, rtol=0)
    assert all(abs(side - 224 * 300 / 248) <= 1 for side in seen.size)      # the centre square, in pixels
    for mode, crop_pct, size in (("squash", 0.9, 96), ("center", 0.95, 80), ("center", 1.0, (64, 96))):
        config = {"input_size": (3, *((size, size) if isinstance(size, int) else size)), "crop_pct": crop_pct,
                  "crop_mode": mode, "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
        geometry = registry.timm_geometry(config)
        ours = normalize_image(geometry.fit(image, config["input_size"][1:])[0], (0.5,) * 3, (0.5,) * 3)
        torch.testing.assert_close(ours, timm.data.create_transform(**config)(image), atol=1e-6, rtol=0)
    for weights in (tv_models.ResNet18_Weights.DEFAULT, tv_models.Inception_V3_Weights.DEFAULT):
        preset = weights.transforms()
        size, geometry = registry.torchvision_geometry(preset)
        ours = normalize_image(geometry.fit(image, size)[0], preset.mean, preset.std)
        torch.testing.assert_close(ours, preset(image), atol=1e-6, rtol=0)


def test_a_plain_resize_sees_the_whole_image_and_a_crop_its_middle(tiny_model: LoadedModel) -> None:
    wide = load_image(np.concatenate([np.zeros((40, 40, 3)), np.full((40, 40, 3), 255), np.zeros((40, 40, 3))],
                                     axis=1).astype(np.uint8))
    assert tiny_model.geometry == Geometry()                      # from_module: plain resize
    x, seen = tiny_model.preprocess(wide)
    assert seen is wide and x.shape == (3, 32, 32)
    x, seen = tiny_model.preprocess(wide, crop=True)             # shorter side to 36, centre 32×32
    assert seen.size == (36, 36) and np.asarray(seen).mean() > 200 and x.shape == (3, 32, 32)


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


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_bundled_lite1_and_lite2_load_offline_and_know_a_cat(name: str, size: int, cat_path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_reachable", lambda host, timeout=3.0: pytest.fail("tried the network"))
    model = load_model(name, device="cpu")
    assert model.name == name and model.input_size == (size, size) and model.default_layer == "bn2"
    x, _ = model.preprocess(load_image(cat_path))
    with torch.inference_mode():
        probs = torch.softmax(model.module(x[None]), 1)[0]
    assert int(probs.argmax()) == 285 and float(probs[285]) > 0.3           # Egyptian cat
