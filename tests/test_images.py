"""Odd-but-valid pictures become RGB; invalid ones are refused with a reason."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageError, decode_rgb

LIMITS = {"max_pixels": 50_000_000, "max_bytes": 32 * 1024 * 1024}


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"), ("I;16", "PNG")],
)
def test_odd_modes_become_rgb(mode: str, fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (45, 60), dtype=np.uint8)
    if mode == "I;16":  # 16 bits per pixel, as scanners and DICOM exports write them
        image = Image.fromarray(pixels.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(pixels).convert(mode)
    decoded = decode_rgb(encode(image, fmt), **LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (60, 45)
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        assert np.asarray(decoded).std() > 20


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


def test_refusals_name_their_reason() -> None:
    jpeg = encode(Image.new("RGB", (600, 450), (200, 120, 90)), "JPEG")
    cases = {
        b"": "empty image",
        b"plain text, not a picture": "not a readable image",
        jpeg[:200] + bytes(range(256)) * 8: "corrupt or truncated",
        jpeg[: len(jpeg) // 2]: "truncated",
        png_bomb(30_000, 30_000): "decompression bomb refused",
        png_bomb(10_000, 10_000): r"10000x10000 pixels \(limit 50000000",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            decode_rgb(data, **LIMITS)


def test_file_size_limit() -> None:
    jpeg = encode(Image.new("RGB", (60, 45)), "JPEG")
    with pytest.raises(ImageError, match="limit 10"):
        decode_rgb(jpeg, max_pixels=10**6, max_bytes=10)
