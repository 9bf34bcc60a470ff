"""Odd-but-valid pictures become RGB; invalid ones are refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageError, decode_rgb
from pipeline.samples.bad_images import bad_images, encode, png_bomb

LIMITS = {"max_pixels": 50_000_000, "max_bytes": 32 * 1024 * 1024}


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


def test_refusals_name_their_reason() -> None:
    cases = dict(bad_images().values())
    cases[png_bomb(10_000, 10_000)] = r"10000x10000 pixels \(limit 50000000"
    for data, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            decode_rgb(data, **LIMITS)


def test_file_size_limit() -> None:
    jpeg = encode(Image.new("RGB", (60, 45)), "JPEG")
    with pytest.raises(ImageError, match="limit 10"):
        decode_rgb(jpeg, max_pixels=10**6, max_bytes=10)
