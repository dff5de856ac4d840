"""Image input: every kind of file a user may send, generated here (never downloaded).

Each case either yields an RGB image that explains correctly or one plain sentence.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusioncam import InputError, LoadedModel, explain
from fusioncam.images import DISPLAY_MAX_SIDE, load_image, resize_for_model


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width×height`` pixels, with one tiny data chunk: cheap to
    make, and only a reader that decodes before checking the size would allocate for it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def gradient_rgb(width: int = 64, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8))


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6                                  # orientation: rotate 90° clockwise to display
    return encoded(gradient_rgb(64, 32), "JPEG", exif=exif)


def sixteen_bit_png() -> bytes:
    values = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    return encoded(Image.fromarray(values), "PNG")


def palette_with_transparency() -> bytes:
    image = gradient_rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return encoded(image, "PNG", transparency=0)


GOOD: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: encoded(gradient_rgb(), "JPEG"),
    "png-rgba": lambda: encoded(gradient_rgb().convert("RGBA"), "PNG"),
    "png-la": lambda: encoded(gradient_rgb().convert("LA"), "PNG"),
    "grayscale": lambda: encoded(gradient_rgb().convert("L"), "PNG"),
    "palette-transparency": palette_with_transparency,
    "cmyk-jpeg": lambda: encoded(gradient_rgb().convert("CMYK"), "JPEG"),
    "16-bit-png": sixteen_bit_png,
    "float-tiff": lambda: encoded(Image.fromarray(np.linspace(0, 1, 1200, dtype=np.float32).reshape(30, 40)), "TIFF"),
    "bmp": lambda: encoded(gradient_rgb(), "BMP"),
    "webp": lambda: encoded(gradient_rgb(), "WEBP"),
    "animated-gif": lambda: animated("GIF"),
    "animated-webp": lambda: animated("WEBP"),
    "exif-rotated": rotated_jpeg,
    "thin-but-legal": lambda: encoded(gradient_rgb(500, 8), "PNG"),
}

BAD: dict[str, tuple[Callable[[], bytes], str]] = {
    "zero-bytes": (lambda: b"", "empty"),
    "text-as-jpg": (lambda: b"just some text, not an image\n" * 20, "not an image format"),
    "html-as-jpg": (lambda: b"<!doctype html><html><body><script>alert(1)</script></body></html>", "not an image"),
    "svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', "not an image"),
    "truncated-jpeg": (lambda: encoded(gradient_rgb(400, 300), "JPEG")[:3000], "truncated or corrupt"),
    "1x1": (lambda: encoded(Image.new("RGB", (1, 1), "red"), "PNG"), "only 1×1 px"),
    "3x500": (lambda: encoded(Image.new("RGB", (3, 500), "red"), "PNG"), "only 3×500 px"),
    "20000x20000": (lambda: png_header_only(20000, 20000), "megapixel"),
    "49-megapixels": (lambda: png_header_only(7000, 7000), "megapixel"),
    "decompression-bomb": (lambda: png_header_only(60000, 60000), "megapixel"),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_good_files_become_rgb_images(case: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.img"
    path.write_bytes(GOOD[case]())
    image = load_image(path)
    assert image.mode == "RGB" and min(image.size) >= 8
    assert load_image(path.read_bytes()).size == image.size


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_give_one_plain_sentence(case: str, tmp_path: Path) -> None:
    maker, message = BAD[case]
    path = tmp_path / f"{case}.jpg"
    path.write_bytes(maker())
    with pytest.raises(InputError, match=message) as error:
        load_image(path)
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text and len(text) < 300


def test_missing_file_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such image file"):
        load_image(tmp_path / "nothing.png")


def test_exif_rotation_is_applied() -> None:
    assert load_image(rotated_jpeg()).size == (32, 64)


def test_animation_uses_the_first_frame() -> None:
    for fmt in ("GIF", "WEBP"):
        pixel = np.asarray(load_image(animated(fmt)))[15, 20]
        assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60, fmt


def test_sixteen_bit_values_are_scaled_not_clipped() -> None:
    array = np.asarray(load_image(sixteen_bit_png()))
    assert array[0, 0, 0] == 0 and array[-1, -1, 0] == 255 and 100 < array[15, 20, 0] < 160


def test_transparency_is_composited_onto_white() -> None:
    clear = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert tuple(np.asarray(load_image(encoded(clear, "PNG")))[0, 0]) == (255, 255, 255)


def test_large_legal_images_are_downscaled_first() -> None:
    image = load_image(np.zeros((3000, 4500, 3), dtype=np.uint8))
    assert max(image.size) == DISPLAY_MAX_SIDE and image.size == (2048, 1365)


@pytest.mark.parametrize("array", [np.zeros((10, 10, 2)), np.zeros((4, 10, 10, 3)), np.full((10, 10), np.nan)])
def test_bad_arrays_are_plain_errors(array: np.ndarray) -> None:
    with pytest.raises(InputError):
        load_image(array)


def test_float_arrays_in_unit_range_are_scaled() -> None:
    array = np.full((12, 12, 3), 0.5, dtype=np.float32)
    assert np.asarray(load_image(array))[0, 0].tolist() == [128, 128, 128]


def test_centre_crop_option_keeps_the_middle() -> None:
    wide = Image.new("RGB", (300, 100), "black")
    wide.paste(Image.new("RGB", (100, 100), "white"), (100, 0))
    cropped = np.asarray(resize_for_model(wide, (32, 32), crop=True))
    assert cropped.shape == (32, 32, 3) and cropped.mean() > 200
    assert np.asarray(resize_for_model(wide, (32, 32))).shape == (32, 32, 3)


@pytest.mark.parametrize("case", ["cmyk-jpeg", "16-bit-png", "animated-gif", "exif-rotated", "thin-but-legal"])
def test_odd_but_legal_files_explain(case: str, tiny_model: LoadedModel) -> None:
    exp = explain(tiny_model, GOOD[case]())
    assert all(np.isfinite(m).all() for m in exp.maps.values())
