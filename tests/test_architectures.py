"""Every classifier family × every method, on random weights and small inputs (offline).

In the spirit of pytorch-grad-cam's ``test_run_all_models.py``: CNNs (ResNet, MobileNetV3,
EfficientNet, ConvNeXt, RegNet) and transformers whose layers output tokens (ViT, DeiT with a
distillation token, a ViT with register tokens) or channels-last maps (Swin). Models are built
shallower or narrower where timm's constructors allow (same block types, fewer or thinner),
and the matrix explains a layer with few channels where the default has many: exact Score-CAM
costs one forward per channel, and the methods do not depend on the layer's depth.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import timm
import torch
from torch import nn

from fusioncam import MAP_NAMES, LoadedModel, ModelError, explain
from fusioncam.explain import capture_evidence
from fusioncam.gradient import GRADIENT_METHODS
from fusioncam.images import load_image
from fusioncam.tokens import Layout, LayoutError, infer_layout

CLASSES = [f"c{i}" for i in range(10)]

# name → (timm architecture, constructor overrides, input side, expected default layer, layer
# explained in the matrix: the default unless its channel count makes exact Score-CAM slow here)
ARCHITECTURES: dict[str, tuple[str, dict, int, str, str | None]] = {
    "resnet18": ("resnet18", {"channels": (16, 32, 64, 128)}, 64, "layer4", None),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 64, "blocks", "blocks.3"),
    "efficientnet_b0": ("efficientnet_b0", {}, 64, "bn2", "blocks.2"),
    "convnext_atto": ("convnext_atto", {"dims": (16, 32, 64, 128)}, 64, "norm_pre", None),
    "regnetx_002": ("regnetx_002", {}, 64, "final_conv", "s2"),
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": 64, "depth": 2}, 64, "blocks.1.norm1", None),
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 64, "depth": 2}, 64,
                            "blocks.1.norm1", None),
    "vit_registers": ("vit_small_patch14_reg4_dinov2", {"img_size": 56, "depth": 2, "embed_dim": 96,
                                                        "num_heads": 2}, 56, "blocks.1.norm1", None),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 64, "depths": (1, 1, 1, 1), "embed_dim": 24,
                                              "num_heads": (1, 1, 1, 1), "window_size": 2}, 64,
             "layers.3.blocks.0.norm1", None),
}
LAYOUTS = {"vit_tiny": ("tokens", 1), "deit_tiny_distilled": ("tokens", 2), "vit_registers": ("tokens", 5),
           "swin": ("channels_last", 0)}


def build(name: str, **overrides: object) -> LoadedModel:
    """A random-weight (seeded) model of family ``name`` wrapped as a user would wrap any classifier.

    timm initialises biases to zero, so a masked input that is mostly the (zero) baseline gives a
    layer norm right after the stem an all-zero vector, which it scales by ``1/√ε``: float noise
    of 1e-7 then moves logits by 0.1. Trained networks have biases; random ones get them here."""
    architecture, kwargs, side, _, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    module = timm.create_model(architecture, pretrained=False, num_classes=len(CLASSES), **{**kwargs, **overrides})
    with torch.no_grad():
        for parameter_name, parameter in module.named_parameters():
            if parameter_name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return LoadedModel.from_module(module, name=name, input_size=(side, side), mean=(0.5,) * 3, std=(0.5,) * 3,
                                   class_names=CLASSES)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for these small models: on a busy 2-core machine two threads wait for
    each other at every small operator (EfficientNet-B0 here: 1 s with one thread, 18–33 s with two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in module.modules())


@pytest.fixture(scope="module")
def images(tiny_image_module: np.ndarray) -> list[np.ndarray]:
    return [tiny_image_module, np.ascontiguousarray(255 - tiny_image_module[::-1])]


@pytest.fixture(scope="module")
def tiny_image_module() -> np.ndarray:
    """A 70×90 image with structure (a bright square on noise); not square, as photos are not."""
    generator = np.random.default_rng(3)
    image = (generator.random((70, 90, 3)) * 120).astype(np.uint8)
    image[15:45, 20:60] = 230
    return image


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_method_on_every_architecture(name: str, images: list[np.ndarray]) -> None:
    """Gradient family, exact Score-CAM and Fusion-CAM: finite maps of the input size in [0, 1],
    no hook left, a batch equal to one-by-one runs, a sensible default layer.

    A batch differs from single runs by float rounding (~1e-7; normalised maps up to ~1e-5, so
    they are compared to 1e-4). Two places amplify it, by the method's design: a pixel tied with
    the θ percentile may flip in ``denoised`` (≤ 0.5 % of pixels may differ there), and random
    networks barely react to masking, so their β can be ~1e-5 and the weights
    ``β_den / (β_den + β_reg)`` ill-conditioned: the maps built from the weights are compared
    only where ``|β_den + β_reg| ≥ 1e-3``; the evidence and the β always are."""
    model = build(name)
    _, _, side, default, explained = ARCHITECTURES[name]
    assert model.default_layer == default
    if name in LAYOUTS:
        layout = model.layer_shape(default).layout
        assert (layout.kind, layout.prefix) == LAYOUTS[name]
    layer = explained or default
    batch = explain(model, images, target=[1, None], layer=layer, chunk_size=64)
    alone = [explain(model, images[0], target=1, layer=layer, chunk_size=64),
             explain(model, images[1], layer=layer, chunk_size=64)]
    for together, single in zip(batch, alone, strict=True):
        assert together.report["forward_passes"]["masked"] > 0        # exact Score-CAM ran
        torch.testing.assert_close(together.evidence.activations, single.evidence.activations, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(together.evidence.region_scores, single.evidence.region_scores,
                                   atol=1e-5, rtol=1e-4)
        betas = single.report["betas"]
        conditioned = abs(betas["denoised"] + betas["region"]) >= 1e-3
        for key in ("denoised", "region", "baseline_probability", *(("combined",) if conditioned else ())):
            assert together.report["betas"][key] == pytest.approx(betas[key], abs=1e-5), key
        for method in GRADIENT_METHODS:
            cam = together.evidence.gradient_map(method).numpy()
            assert cam.shape == (side, side) and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1, method
            np.testing.assert_allclose(cam, single.evidence.gradient_map(method).numpy(), atol=1e-4, err_msg=method)
        for map_name in MAP_NAMES:
            array = together.maps[map_name]
            assert array.shape == (side, side) and np.isfinite(array).all(), map_name
            assert 0 <= array.min() <= array.max() <= 1, map_name
            if map_name in ("gradcam", "scorecam"):
                np.testing.assert_allclose(array, single.maps[map_name], atol=1e-4, err_msg=map_name)
            elif map_name == "denoised" or conditioned:
                assert np.mean(~np.isclose(array, single.maps[map_name], atol=1e-4, rtol=0)) <= 0.005, map_name
    assert hook_count(model.module) == 0


def test_vit_maps_are_the_patch_grid_of_the_tokens_without_prefix() -> None:
    """A ViT's ``A`` is ``tokens[:, 1:]`` laid out row-major on the patch grid, and so is ``G``."""
    model = build("deit_tiny_distilled")
    [evidence] = capture_evidence(model, [load_image(np.full((64, 64, 3), 90, np.uint8))], target=3)
    module = model.module
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        store["tokens"] = output.detach().requires_grad_(True)
        return store["tokens"]

    handle = module.blocks[1].norm1.register_forward_hook(keep)
    try:
        logit = module(evidence.x[None])[0, 3]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logit, store["tokens"])
    for ours, raw in ((evidence.activations, store["tokens"].detach()), (evidence.gradients, grad)):
        assert ours.shape == (192, 4, 4)
        torch.testing.assert_close(ours, raw[0, 2:].reshape(4, 4, 192).permute(2, 0, 1))


def test_a_vit_with_dynamic_image_size_explains_a_non_square_input(images: list[np.ndarray]) -> None:
    model = build("vit_tiny", dynamic_img_size=True)
    model = LoadedModel.from_module(model.module, name="vit_dynamic", input_size=(48, 80), class_names=CLASSES)
    assert model.layer_shape("blocks.1.norm1").layout == Layout("tokens", (3, 5), 1)
    exp = explain(model, images[0], chunk_size=32)
    assert exp.evidence.activations.shape == (192, 3, 5)
    assert all(m.shape == (48, 80) and np.isfinite(m).all() for m in exp.maps.values())


def test_a_model_that_cannot_run_at_the_input_size_is_refused_at_load() -> None:
    module = build("vit_tiny").module                             # fixed 64×64 patch grid
    with pytest.raises(ModelError, match=r"cannot run on its 48×80 input: AssertionError"):
        LoadedModel.from_module(module, name="vit", input_size=(48, 80), class_names=CLASSES)


def test_explaining_a_full_vit_at_its_last_blocks_first_norm() -> None:
    """The outside contract: ``explain(model, image, layer="blocks.11.norm1")`` on a timm ViT."""
    torch.manual_seed(0)
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10)
    model = LoadedModel.from_module(module, name="vit", input_size=(64, 64), class_names=CLASSES)
    assert model.default_layer == "blocks.11.norm1"
    exp = explain(model, np.full((50, 50, 3), 128, np.uint8), layer="blocks.11.norm1", chunk_size=64)
    assert exp.report["layer"] == "blocks.11.norm1" and exp.report["channels"]["total"] == 192
    assert all(np.isfinite(m).all() for m in exp.maps.values())


def test_layers_that_are_not_maps_are_refused_with_what_was_found(images: list[np.ndarray]) -> None:
    model = build("vit_tiny")
    assert "head" not in model.candidate_layers() and "blocks.1.norm1" in model.candidate_layers()
    with pytest.raises(ModelError, match=r"layer 'head' outputs 1×10, not a 4-D feature map"):
        explain(model, images[0], layer="head")
    assert hook_count(model.module) == 0


def test_useful_layers_are_few_and_keep_the_default() -> None:
    model = build("vit_tiny")
    useful = model.candidate_layers(useful=True)
    assert {"blocks.0.norm1", "blocks.1.norm1", "blocks.0", "blocks.1"} <= set(useful)   # the default in every block
    assert "blocks.0.attn.qkv" not in useful and "blocks.1.norm2" not in useful
    assert set(useful) < set(model.candidate_layers())


@pytest.mark.parametrize(("shape", "size", "prefix", "last_dim", "expected"), [
    ((2, 197, 192), (224, 224), 1, False, Layout("tokens", (14, 14), 1)),
    ((2, 198, 192), (224, 224), 2, False, Layout("tokens", (14, 14), 2)),
    ((2, 196, 192), (224, 224), 1, False, Layout("tokens", (14, 14), 0)),         # before the class token
    ((2, 201, 384), (224, 224), None, False, Layout("tokens", (14, 14), 5)),      # undeclared: searched
    ((2, 1 + 37 * 37, 384), (518, 518), 1, False, Layout("tokens", (37, 37), 1)),  # patch 14
    ((2, 1 + 12 * 20, 64), (192, 320), 1, False, Layout("tokens", (12, 20), 1)),  # non-square
    ((2, 56, 56, 96), (224, 224), None, True, Layout("channels_last", (56, 56))),
    ((2, 7, 7, 768), (224, 224), None, False, Layout("channels_last", (7, 7))),
    ((2, 1280, 7, 7), (224, 224), None, False, Layout("maps", (7, 7))),
    ((2, 8, 18, 18), (20, 20), None, False, Layout("maps", (18, 18))),           # valid-padding convolutions
    ((2, 16, 16, 16), (64, 64), None, False, Layout("maps", (16, 16))),          # a cube: the convention
    ((2, 16, 16, 16), (64, 64), None, True, Layout("channels_last", (16, 16))),  # … unless it acts on the last dim
])
def test_layouts_are_read_from_the_shape(shape: tuple, size: tuple, prefix: int | None, last_dim: bool,
                                         expected: Layout) -> None:
    assert infer_layout(shape, size, prefix, last_dim) == expected


@pytest.mark.parametrize(("shape", "message"), [
    ((2, 1000), "outputs 2×1000, not a 4-D feature map"),
    ((2, 3, 197, 64), "neither 197×64 .* nor 3×197 .* aspect ratio"),
    ((2, 199, 192), "199 tokens \\(less 1 prefix token\\) form no patch grid of the 224×224 input"),
    ((2, 512, 1, 1), "1×1 maps hold no spatial evidence"),
])
def test_undeterminable_layouts_are_refused_with_a_sentence(shape: tuple, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        infer_layout(shape, (224, 224), 1)


def test_token_and_channels_last_mappings_are_linear_views() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)     # 1 prefix + 2×2, D = 3
    maps = Layout("tokens", (2, 2), 1).to_map(tokens)
    assert maps.shape == (2, 3, 2, 2) and maps[1, 2, 1, 0] == tokens[1, 1 + 2 * 1 + 0, 2]
    nhwc = torch.randn(2, 4, 6, 5)
    torch.testing.assert_close(Layout("channels_last", (4, 6)).to_map(nhwc), nhwc.permute(0, 3, 1, 2))
