"""Image input in one place: read, validate and convert anything a user sends, then preprocess.

Every failure is an :class:`InputError` whose message is one plain sentence. The library,
the CLI and the app all read images through :func:`load_image`.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000          # decoded pixel cap, checked from the header before decoding
MIN_SIDE = 8                     # smaller images carry no spatial evidence worth explaining
DISPLAY_MAX_SIDE = 2048          # large legal images are downscaled to this before anything else

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class InputError(ValueError):
    """The image cannot be explained; the message is one plain sentence for the user."""


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    """Open a path or raw bytes lazily (header only), with plain errors for common failures."""
    if isinstance(source, bytes):
        if not source:
            raise InputError("The file is empty (0 bytes).")
        handle: object = io.BytesIO(source)
        label = "the uploaded data"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"No such image file: {path}.")
        if path.stat().st_size == 0:
            raise InputError(f"The file {path.name} is empty (0 bytes).")
        handle = path
        label = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(handle)  # type: ignore[arg-type]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{label} is larger than the {MAX_PIXELS // 1_000_000}-megapixel limit; "
                         "please send a smaller one.") from None
    except UnidentifiedImageError:
        raise InputError(f"{label} is not an image format that can be read "
                         "(PNG, JPEG, WebP, GIF, BMP, TIFF …).") from None
    except OSError as error:
        raise InputError(f"{label} could not be read as an image ({error}).") from None


def _decode(image: Image.Image) -> Image.Image:
    """Check the size from the header, then decode the first frame with EXIF orientation applied."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InputError(f"The image is {width}×{height} px, more than the "
                         f"{MAX_PIXELS // 1_000_000}-megapixel limit; please send a smaller one.")
    if min(width, height) < MIN_SIDE:
        raise InputError(f"The image is only {width}×{height} px; at least {MIN_SIDE}×{MIN_SIDE} px is needed.")
    try:
        image.seek(0)
        if image.format == "JPEG":
            image.draft("RGB", (DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"The image file is truncated or corrupt ({error}).") from None


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale → 8-bit ``L``: 16-bit data is divided by 257,
    floats in [0, 1] are scaled by 255, anything else is clipped to [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited onto white."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_bit_depth_to_8bit(image)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    """An ``H×W``, ``H×W×1``, ``H×W×3`` or ``H×W×4`` array, uint8 or float in [0, 1], as an image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"An image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}.")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise InputError("An image array must hold finite numbers.")
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def load_image(source: ImageSource) -> Image.Image:
    """Read ``source`` (path, bytes, PIL image or array) as an RGB display image.

    The first frame of animations is used; EXIF rotation is applied; images with more than
    ``MAX_PIXELS`` pixels or a side under ``MIN_SIDE`` are refused; images with a side over
    ``DISPLAY_MAX_SIDE`` are downscaled (aspect kept) before anything else.
    """
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (str, os.PathLike, bytes)):
        image = _open(source)
    else:
        raise InputError(f"Cannot read an image from a {type(source).__name__}.")
    image = to_rgb(_decode(image))
    if max(image.size) > DISPLAY_MAX_SIDE:
        image = image.copy()
        image.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.LANCZOS)
    return image


GEOMETRY_MODES = ("squash", "shorter", "cover")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Geometry:
    """How an image becomes the model's ``H×W`` input: a resize, then a centre crop to ``H×W``.

    ``mode`` (the scaled size ``scale = (S_h, S_w)``, ``None``: the model's ``H×W``):

    - ``squash``: resize to exactly ``S_h×S_w`` (aspect changes; with ``scale = H×W`` no crop);
    - ``shorter``: the shorter side to ``S_h``, the longer to ``⌊S_h·long/short⌋`` (torchvision's
      ``Resize(S)``, used by torchvision's presets and timm's square ``center`` mode);
    - ``cover``: scale by ``r = min(h/S_h, w/S_w)`` to ``(round(h/r), round(w/r))`` (timm's
      ``ResizeKeepRatio`` for non-square ``center`` mode).

    The crop keeps the middle: offset ``round((size − crop) / 2)`` (torchvision's ``CenterCrop``).
    ``interpolation`` is a Pillow filter name (timm and torchvision resize Pillow images with it).
    """

    mode: str = "squash"
    scale: tuple[int, int] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.mode not in GEOMETRY_MODES:
            raise ValueError(f"unknown resize mode {self.mode!r}; choose one of {', '.join(GEOMETRY_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of "
                             f"{', '.join(INTERPOLATIONS)}")

    @classmethod
    def centre_crop(cls, size: tuple[int, int], crop_pct: float = 0.875,
                    interpolation: str = "bilinear") -> Geometry:
        """The shorter side to ``⌊max(H, W) / crop_pct⌋``, then the centre ``H×W``."""
        side = math.floor(max(size) / crop_pct)
        return cls("shorter", (side, side), interpolation)

    def resized_size(self, image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
        """``(width, height)`` of the resized image for an image of ``image_size = (width, height)``."""
        width, height = image_size
        scale_h, scale_w = self.scale or size
        if self.mode == "squash":
            return scale_w, scale_h
        if self.mode == "shorter":
            short, long = sorted((width, height))
            new_long = int(scale_h * long / short)
            return (scale_h, new_long) if width <= height else (new_long, scale_h)
        ratio = min(height / scale_h, width / scale_w)
        return round(width / ratio), round(height / ratio)

    def fit(self, image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int, int]]:
        """``(model_image, box)``: ``image`` resized and centre-cropped to ``size = (H, W)``, and
        the ``(left, top, right, bottom)`` box of the original image that it shows."""
        height, width = size
        resized_w, resized_h = self.resized_size(image.size, size)
        if resized_w < width or resized_h < height:
            raise ValueError(f"a {self.mode} resize to {resized_w}×{resized_h} cannot be cropped to {width}×{height}")
        resized = image.resize((resized_w, resized_h), Image.Resampling[self.interpolation.upper()])
        left, top = round((resized_w - width) / 2.0), round((resized_h - height) / 2.0)
        fx, fy = image.width / resized_w, image.height / resized_h
        box = (round(left * fx), round(top * fy), round((left + width) * fx), round((top + height) * fy))
        return resized.crop((left, top, left + width, top + height)), box


def resize_for_model(image: Image.Image, size: tuple[int, int], crop: bool = False) -> Image.Image:
    """Resize to the model's ``(H, W)``: a direct (aspect-changing) resize as the reference does,
    or with ``crop=True`` a shorter-side resize to ``⌊max(H, W) / 0.875⌋`` then a centre crop."""
    geometry = Geometry.centre_crop(size) if crop else Geometry()
    return geometry.fit(image, size)[0]


def normalize_image(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``x = (rgb / 255 − mean) / std`` as a ``3×H×W`` float32 tensor."""
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
