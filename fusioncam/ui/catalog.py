"""Which models, layers and classes the user can pick, and a bounded cache of loaded models."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fusioncam import downloads
from fusioncam.models import BUNDLED, LoadedModel, ModelError, load_model

MODEL_CHOICES: list[tuple[str, str]] = [
    ("EfficientNet-Lite0 (bundled, works offline)", BUNDLED),
    ("EfficientNet-Lite1 (bundled, works offline)", "efficientnet_lite1"),
    ("EfficientNet-Lite2 (bundled, works offline)", "efficientnet_lite2"),
    ("ResNet-50 (torchvision, downloads on first use)", "torchvision:resnet50"),
    ("MobileNetV3-Large (torchvision, downloads on first use)", "torchvision:mobilenet_v3_large"),
    ("ConvNeXt-Tiny (timm, downloads on first use)", "timm:convnext_tiny"),
    ("ViT-B/16 (timm, transformer, downloads on first use)", "timm:vit_base_patch16_224"),
    ("DeiT-S distilled (timm, transformer, downloads on first use)", "timm:deit_small_distilled_patch16_224"),
    ("Swin-T (timm, transformer, downloads on first use)", "timm:swin_tiny_patch4_window7_224"),
]
TOP_CLASS = "top"           # target-class value meaning "the model's top prediction"
DEFAULT_LAYER = "default"   # layer value meaning "the model's default target layer"
MAX_NAME = 100              # longest model spec or layer name accepted from a user
MODEL_SPEC = re.compile(r"(?:timm|torchvision):[A-Za-z0-9_.\-]+|[A-Za-z0-9_]+")
LAYER_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
MAX_PARAMETERS = 200_000_000   # hub models larger than this (ViT-L, ConvNeXt-XL …) are refused before download
ALLOWED_MODELS = "FUSIONCAM_MODELS"            # comma-separated specs: the models a Space offers
ALLOW_ANY_MODEL = "FUSIONCAM_ALLOW_ANY_MODEL"  # "1": a Space also accepts any timm:/torchvision: name


def on_space() -> bool:
    """Whether the app runs on a Hugging Face Space (which sets ``SPACE_ID``)."""
    return bool(os.environ.get("SPACE_ID"))


def model_choices() -> list[tuple[str, str]]:
    """The models the page offers: :data:`ALLOWED_MODELS` when set (labels from
    :data:`MODEL_CHOICES` where known), else :data:`MODEL_CHOICES`."""
    listed = os.environ.get(ALLOWED_MODELS, "")
    specs = [spec.strip() for spec in listed.split(",") if spec.strip()]
    if not specs:
        return list(MODEL_CHOICES)
    labels = {spec: label for label, spec in MODEL_CHOICES}
    return [(labels.get(spec, spec), spec) for spec in specs]


def any_model_allowed() -> bool:
    """Locally any ``timm:``/``torchvision:`` name works; on a Space only the offered list does,
    unless :data:`ALLOW_ANY_MODEL` is ``1`` (each new name is a download the Space pays for)."""
    return not on_space() or os.environ.get(ALLOW_ANY_MODEL) == "1"


class ModelCache:
    """At most ``capacity`` loaded models, least recently used evicted first — never one in use.

    A lock per model name makes concurrent first requests load a model once, without blocking
    requests for models already loaded. Requests then share a loaded model without a lock: each
    capture acts on its own forward only (:func:`fusioncam.capture.capture_layer`).

    A request that runs several stages on models holds them for its whole run with
    :meth:`using` (all its models at once, so two requests never wait on each other): a held
    model is never evicted. A model wanted while every loaded slot is held by other requests
    waits until one is released (:meth:`must_wait` says whether it would); otherwise the least
    recently used model that nobody holds makes room.
    """

    def __init__(self, capacity: int = 2, loader: Callable[[str], LoadedModel] | None = None) -> None:
        if capacity < 1:
            raise ValueError("the model cache needs room for at least one model")
        self.capacity = capacity
        self._loader = loader or _load_within_budget
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._users: Counter[str] = Counter()   # spec → requests holding it (held specs keep a slot)
        self._waiting = 0
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)

    def get(self, spec: str) -> LoadedModel:
        """The loaded model for ``spec``, loading it (and evicting the least recently used model
        nobody holds) when needed; while every slot is held by other requests, it waits.

        A spec that cannot be loaded leaves nothing behind (no cache entry, no loading lock).
        """
        spec = spec.strip()
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                return self._models[spec]
            self._wait_for({spec})
            loading = self._loading.setdefault(spec, threading.Lock())
        with loading:
            with self._lock:
                if spec in self._models:
                    return self._models[spec]
            try:
                model = self._loader(spec)
                with self._lock:
                    self._models[spec] = model
                    self._evict(keep=spec)
            finally:
                with self._lock:
                    self._loading.pop(spec, None)
            return model

    @contextmanager
    def using(self, *specs: str) -> Iterator[None]:
        """Hold ``specs`` (at most ``capacity`` distinct ones) for the block: none of them is evicted
        before the block ends. Waits, holding nothing, until all of them fit beside the models
        other requests hold; inside the block, :meth:`get` (loads) the held specs only."""
        wanted = set(spec.strip() for spec in specs)
        if len(wanted) > self.capacity:
            raise ValueError(f"one request can hold at most {self.capacity} models at once")
        with self._lock:
            self._wait_for(wanted)
            self._users.update(wanted)
        try:
            yield
        finally:
            with self._lock:
                self._users.subtract(wanted)
                self._users += Counter()       # drop the specs nobody holds any more
                self._evict()
                self._released.notify_all()

    def must_wait(self, *specs: str) -> bool:
        """Whether :meth:`using` these ``specs`` would wait for other requests to release a model now."""
        with self._lock:
            return not self._fits(set(spec.strip() for spec in specs))

    def waiting(self) -> int:
        """How many requests are waiting for a model slot right now."""
        with self._lock:
            return self._waiting

    def held(self) -> list[str]:
        """Names of the models requests hold right now."""
        with self._lock:
            return sorted(self._users)

    def pending(self) -> int:
        """How many specs are being loaded right now (0 when idle: failed loads leave no lock)."""
        with self._lock:
            return len(self._loading)

    def loaded(self) -> list[str]:
        """Names of the cached models, least recently used first."""
        with self._lock:
            return list(self._models)

    def _fits(self, wanted: set[str]) -> bool:
        """Whether ``wanted`` and every held model fit in the cache together (lock held)."""
        return len(set(self._users) | wanted) <= self.capacity

    def _wait_for(self, wanted: set[str]) -> None:
        """Wait (lock held; released while waiting) until ``wanted`` fits beside the held models."""
        if self._fits(wanted):
            return
        self._waiting += 1
        try:
            self._released.wait_for(lambda: self._fits(wanted))
        finally:
            self._waiting -= 1

    def _evict(self, keep: str | None = None) -> None:
        """Drop least recently used models nobody holds (nor ``keep``) until within capacity (lock held)."""
        spare = [spec for spec in self._models if spec not in self._users and spec != keep]
        while len(self._models) > self.capacity and spare:
            del self._models[spare.pop(0)]


def _load_within_budget(spec: str) -> LoadedModel:
    """Load ``spec`` (hub models refused above :data:`MAX_PARAMETERS`), then keep the download
    cache within its size budget (:func:`fusioncam.downloads.prune`)."""
    model = load_model(spec, device="auto", max_parameters=MAX_PARAMETERS)
    if spec != BUNDLED and ":" in spec:
        downloads.prune()
    return model


MODELS = ModelCache(capacity=2)


def parse_model(value: str | None) -> str:
    """A model value as a registry spec: the bundled name, ``timm:NAME`` or ``torchvision:NAME``.

    Only the shape is checked here (a short name of letters, digits, ``_ . -``); whether timm or
    torchvision knows the name is the registry's call. Anything else is a plain ``ModelError``,
    so no user text longer or stranger than a model name travels further.
    """
    spec = (value or BUNDLED).strip()
    if len(spec) > MAX_NAME or not MODEL_SPEC.fullmatch(spec):
        shown = spec if len(spec) <= 40 else spec[:40] + "…"
        raise ModelError(f"Unknown model {shown!r}: use {BUNDLED!r}, 'timm:NAME' or 'torchvision:NAME'.")
    offered = [choice for _, choice in model_choices()]
    if spec not in offered and not any_model_allowed():
        raise ModelError(f"This Space offers only these models: {', '.join(offered)}. "
                         "Run the app yourself to explain any timm or torchvision model.")
    return spec


def layer_choices(model: LoadedModel) -> list[tuple[str, str]]:
    """The model's default layer first, then the useful candidate layers, deepest first (a ViT-B
    has about 190 layers with a map; the picker lists its blocks)."""
    return [(f"Model default ({model.default_layer})", DEFAULT_LAYER),
            *((name, name) for name in reversed(model.candidate_layers(useful=True)))]


def class_choices(class_names: list[str], top5: list[dict]) -> list[tuple[str, str]]:
    """"Top prediction", then the top-5 with their probabilities, then every other class."""
    first = {entry["index"] for entry in top5}
    return [("Top prediction (automatic)", TOP_CLASS),
            *((f"{e['index']}: {e['name']} — {e['probability']:.1%}", str(e["index"])) for e in top5),
            *((f"{i}: {name}", str(i)) for i, name in enumerate(class_names) if i not in first)]


def parse_target(value: str | int | None, class_names: list[str]) -> int | None:
    """A target-class value as a class index (``None``: the top prediction).

    Accepts ``"top"``/empty, an index (``285`` or ``"285"``), a choice label (``"285: Egyptian cat"``)
    or a class name (case-insensitive). Anything else is a plain ``ValueError``.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", TOP_CLASS)):
        return None
    text = str(value).strip()
    head = text.split(":", 1)[0].strip()
    if head.lstrip("-").isdigit():
        index = int(head)
        if not 0 <= index < len(class_names):
            raise ValueError(f"Class {index} does not exist: this model has classes 0–{len(class_names) - 1}.")
        return index
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise ValueError(f"Unknown class {text!r}: pick one from the list, or give a class index "
                     f"0–{len(class_names) - 1}.")


def parse_layer(value: str | None) -> str | None:
    """A layer value as a dotted layer name (``None``: the model's default layer).

    Only the shape is checked here (dot-separated names of letters, digits and ``_``, no
    ``__dunder__`` part); whether the model has that submodule is
    :meth:`LoadedModel.resolve_layer`'s call.
    """
    if value is None or value.strip() in ("", DEFAULT_LAYER):
        return None
    name = value.strip()
    dunder = any(part.startswith("__") and part.endswith("__") for part in name.split("."))
    if len(name) > MAX_NAME or not LAYER_NAME.fullmatch(name) or dunder:
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise ModelError(f"{shown!r} is not a layer name: pick a layer from the list (e.g. 'bn2' or 'blocks.6').")
    return name
