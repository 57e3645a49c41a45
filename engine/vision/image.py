"""Photo decoding: bytes from a client → an RGB ``uint8`` array, or a clear error.

Pillow does the decoding.  Before any pixel is decoded the header's size is
checked against the configured limits (a 30,000×30,000 PNG of a few kilobytes
would otherwise take gigabytes).  Phone photos are turned upright from their
EXIF orientation; GIFs give their first frame; grayscale, palette, CMYK and
16-bit images become 8-bit RGB; transparent pixels are laid over white.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from faceid.engine.config import DecodeConfig
from faceid.engine.domain.errors import ImageTooLargeError, InvalidImageError

RGBImage = npt.NDArray[np.uint8]

_SUPPORTED = "JPEG, PNG, WEBP, GIF, BMP or TIFF"


def _check_size(width: int, height: int, config: DecodeConfig) -> None:
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image has no pixels ({width}×{height})")
    if width * height > config.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{config.max_pixels:,}; scale it down before sending it"
        )
    ratio = max(width / height, height / width)
    if ratio > config.max_aspect_ratio:
        raise InvalidImageError(
            f"the image is {width}×{height}, an aspect ratio of {ratio:.0f}:1, over the limit of "
            f"{config.max_aspect_ratio:g}:1; send a photo of a face, not a strip or a banner"
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 or im.mode.startswith("I;16") else 255.0
        gray = np.clip(values * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def decode_image(data: bytes, config: DecodeConfig | None = None) -> RGBImage:
    """Decode an encoded photo into an upright ``(height, width, 3)`` RGB ``uint8`` array."""
    config = config or DecodeConfig()
    if not data:
        raise InvalidImageError(f"the image is empty (0 bytes); send the bytes of a {_SUPPORTED} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
            _check_size(im.width, im.height, config)
            im.seek(0)  # animated GIF / WEBP: the first frame
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(im)
            array = np.asarray(rgb, dtype=np.uint8)
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"the {len(data):,} bytes are not an image in a known format; send a {_SUPPORTED} file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"the image declares more pixels than the limit of {config.max_pixels:,} ({exc}); "
            f"scale it down before sending it"
        ) from None
    except OSError as exc:
        raise InvalidImageError(
            f"the image is truncated or corrupt ({exc}); send the complete file"
        ) from None
    except Exception as exc:  # Pillow raises many kinds on hostile input (SyntaxError, ValueError, …)
        raise InvalidImageError(f"the image could not be decoded ({type(exc).__name__}: {exc})") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidImageError(f"the image decoded to an unexpected shape {array.shape}")
    return np.ascontiguousarray(array)
