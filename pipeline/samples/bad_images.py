"""Poisonous and odd images as real datasets hold them: for the image tests and the chaos run."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG header claiming a huge picture (the classic decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    row = b"\x00" + b"\x00" * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * 4))
        + chunk(b"IEND", b"")
    )


def bad_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the reason a refusal must give, as a regular expression)."""
    jpeg = encode(Image.new("RGB", (600, 450), (200, 120, 90)), "JPEG")
    return {
        "empty": (b"", "empty image"),
        "text": (b"plain text, not a picture", "not a readable image"),
        "corrupt": (jpeg[:200] + bytes(range(256)) * 8, "corrupt or truncated"),
        "truncated": (jpeg[: len(jpeg) // 2], "truncated"),
        "bomb": (png_bomb(30_000, 30_000), "decompression bomb refused"),
    }


def odd_images(seed: int = 0) -> dict[str, bytes]:
    """Valid pictures in the modes scanners and exports write: each must become RGB."""
    pixels = np.random.default_rng(seed).integers(0, 255, (45, 60), dtype=np.uint8)
    gray = Image.fromarray(pixels)
    return {
        "grayscale": encode(gray, "JPEG"),
        "rgba": encode(gray.convert("RGBA"), "PNG"),
        "cmyk": encode(gray.convert("CMYK"), "JPEG"),
        "palette": encode(gray.convert("P"), "PNG"),
        "16bit": encode(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG"),
    }
