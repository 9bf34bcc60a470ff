"""Bytes to an RGB picture, refusing what would be unsafe or impossible to decode."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """One image that cannot be indexed; its message is the reason recorded for it."""


def decode_rgb(
    data: bytes | None,
    max_pixels: int,
    max_bytes: int,
    draft_size: tuple[int, int] | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Decode one image to RGB; raise ImageError with a short reason when it cannot be.

    `draft_size`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, never below this size
    (libjpeg skips the work instead of resizing after it); other formats decode whole, then
    shrink by a whole factor, never below it, before converting (a 16-bit picture converts
    through float32). `formats`: PIL format names accepted (None: any PIL reads).
    """
    return to_rgb(decode(data, max_pixels, max_bytes, draft_size, formats))


def decode(
    data: bytes | None,
    max_pixels: int,
    max_bytes: int,
    draft_size: tuple[int, int] | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """`decode_rgb` before its conversion: the picture in its own mode and depth."""
    image = check_header(data, max_pixels, max_bytes, formats)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit (check_header); PIL's bomb warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if draft_size:
                image.draft(image.mode, draft_size)
            image.load()
            if draft_size and image.format != "JPEG":  # a JPEG was drafted already
                image = _reduce(image, draft_size)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    return image


def check_header(
    data: bytes | None, max_pixels: int, max_bytes: int, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """The image opened by its header alone (nothing decoded yet), refused when empty, too
    large, too many pixels or not a format PIL (or `formats`) reads."""
    if not data:
        raise ImageError("empty image (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"image file is {len(data)} bytes (limit {max_bytes})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} pixels (limit {max_pixels} pixels)")
    return image


def _reduce(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink by the largest whole factor that keeps at least `size` (box average)."""
    factor = min(image.width // size[0], image.height // size[1])
    if factor < 2:
        return image
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # PIL reduces 32-bit integers, not 16-bit ones
    return image.reduce(factor)


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, alpha, CMYK and 16-bit pictures all become 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Scale the actual range to 8 bits instead of clipping everything above 255 to white.
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
        image = Image.fromarray(scaled.astype(np.uint8))
    elif image.mode in ("P", "PA", "LA", "RGBA"):
        # Transparent areas become white, not whatever colour hides behind the alpha.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")
