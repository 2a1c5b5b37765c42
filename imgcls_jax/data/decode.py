"""Decoding one image file to uint8 pixels, as every host-fed source does: 8-bit colour or
grey, shorter side resized to the target size, centre square (one implementation for image
folders, TFDS datasets and prediction, in memory or streamed)."""

from __future__ import annotations

import numpy as np
import PIL.Image

# What PIL raises for a corrupt, truncated or unreadable file (SyntaxError: some truncated PNGs).
DECODE_ERRORS = (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError)


class UnsupportedImageError(ValueError):
    """An image whose pixel format has no agreed 8-bit meaning (e.g. 32-bit float)."""


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_8_bit(img: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    """`img` as 8-bit `mode` ("L" or "RGB"). 16-bit pixels are scaled to 0-255 (not clipped),
    transparency is composited over black, palette, CMYK and YCbCr images are converted to
    colour; raises UnsupportedImageError for float pixels and integers beyond 16 bits."""
    if img.mode == "F":
        raise UnsupportedImageError(
            "32-bit float pixels (PIL mode F) have no agreed 0-255 range; save it as 8 or 16 bits"
        )
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImageError(f"32-bit integer pixels (PIL mode {img.mode}) outside "
                                        "0-65535; save it as 8 or 16 bits")  # fmt: skip
        img = PIL.Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ALPHA_MODES:
        img = img.convert("RGBA")
        img = PIL.Image.alpha_composite(PIL.Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
    return img if img.mode == mode else img.convert(mode)


def _draft(img: PIL.Image.Image, image_size: int) -> None:
    """Lets a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: less work than
    decoding every pixel and resizing) while its shorter side stays >= 2 * `image_size`, so
    the resize that follows still averages over at least 2x2 decoded pixels."""
    if img.format != "JPEG":
        return
    w, h = img.size
    scale = 2 * image_size / min(w, h)
    if scale < 1:
        img.draft(None, (max(1, int(w * scale + 1)), max(1, int(h * scale + 1))))


def decode_image(source, image_size: int, mode: str) -> np.ndarray | None:
    """Returns the image in `source` (a path or a binary file object) as uint8 [S, S, C]
    (shorter side resized, centre crop); None if unreadable. Raises UnsupportedImageError for
    a pixel format with no 8-bit meaning."""
    try:
        with PIL.Image.open(source) as img:
            _draft(img, image_size)
            img.load()  # Reads every pixel, so truncation surfaces inside the try.
            img = to_8_bit(img, mode)
    except UnsupportedImageError:
        raise
    except DECODE_ERRORS:
        return None
    box = centre_square(*img.size)
    img = img.resize((image_size, image_size), PIL.Image.Resampling.BILINEAR, box=box)
    return np.asarray(img, dtype=np.uint8).reshape(image_size, image_size, len(mode))


def centre_square(width: int, height: int) -> tuple[float, float, float, float]:
    """The centre square of a width x height image as (left, top, right, bottom): resizing just
    this box is resizing the shorter side and cropping the centre, without computing the pixels
    the crop would drop."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def decode_named(source, name: str, image_size: int, mode: str) -> np.ndarray | None:
    """`decode_image`, whose UnsupportedImageError names the image (`name`) and the fix."""
    try:
        return decode_image(source, image_size, mode)
    except UnsupportedImageError as e:
        raise UnsupportedImageError(f"{name}: {e}, or remove it.") from None


GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *SIXTEEN_BIT_MODES)
