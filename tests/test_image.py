"""Photo decoding: the formats real clients send, and a clear error for everything else."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from faceid.engine.config import DecodeConfig
from faceid.engine.domain.errors import ImageTooLargeError, InvalidImageError
from faceid.engine.vision.image import decode_image

from .conftest import encode


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    return np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            np.full((height, width), 128.0),
        ],
        axis=2,
    ).astype(np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose PNG header declares ``width``×``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_to_the_exact_rgb_pixels(fmt: str) -> None:
    pixels = gradient()
    params = {"lossless": True} if fmt == "WEBP" else {}
    np.testing.assert_array_equal(decode_image(encode(pixels, fmt, **params)), pixels)


def test_jpeg_decodes_to_rgb_close_to_the_original() -> None:
    pixels = gradient()
    out = decode_image(encode(pixels, "JPEG", quality=95))
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - pixels).mean() < 3


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = gradient()[:, :, 0]
    out = decode_image(encode(gray, "JPEG", quality=95))
    assert out.shape == (*gray.shape, 3)
    assert np.array_equal(out[:, :, 0], out[:, :, 1])


def test_transparent_pixels_are_laid_over_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    out = decode_image(encode(rgba, "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[7, 7]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (16, 16, 3)
    assert out[8, 8, 0] > 200 and out[8, 8, 1] < 60 and out[8, 8, 2] < 60


def test_sixteen_bit_png_is_scaled_not_clipped_to_white() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    out = decode_image(encode(Image.fromarray(ramp), "PNG"))
    assert out.shape == (16, 256, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    assert 110 < out[0, 128, 0] < 145
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)


def test_gif_gives_its_first_frame() -> None:
    red = Image.new("RGB", (10, 10), (255, 0, 0))
    blue = Image.new("RGB", (10, 10), (0, 0, 255))
    import io

    buf = io.BytesIO()
    red.save(buf, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    out = decode_image(buf.getvalue())
    assert out[5, 5, 0] > 200 and out[5, 5, 2] < 50


def test_exif_orientation_turns_a_phone_photo_upright() -> None:
    upright = gradient(64, 48)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a phone's sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = decode_image(encode(stored, "PNG", exif=exif))
    np.testing.assert_array_equal(out, upright)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is plainly text and not a photo", "not an image"),
        (bytes(range(256)) * 8, "not an image"),
        (b"<html><body>404</body></html>", "not an image"),
    ],
)
def test_bytes_that_are_not_an_image_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_files_are_refused(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = encode(noise, fmt)
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2])


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding() -> None:
    data = png_claiming(30_000, 30_000)
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"over the limit|more pixels than the limit"):
        decode_image(data)
    assert time.perf_counter() - start < 1.0  # nothing was allocated or decoded


def test_the_pixel_limit_is_configurable() -> None:
    data = encode(gradient(100, 100))
    with pytest.raises(ImageTooLargeError, match="limit of 5,000"):
        decode_image(data, DecodeConfig(max_pixels=5_000))
    assert decode_image(data, DecodeConfig(max_pixels=10_000)).shape == (100, 100, 3)


def test_absurd_aspect_ratios_are_refused() -> None:
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        decode_image(encode(np.zeros((2, 500, 3), np.uint8)))


def test_config_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        DecodeConfig(max_pixels=0)
