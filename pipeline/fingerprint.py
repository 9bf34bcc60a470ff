"""Fingerprints: what an audit compares without reading an image again, made at ingest.

Each point's payload holds four of them (`FIELDS`), each a tier of evidence that two images
are one:

    fp_sha256   the file's bytes (a byte copy)
    fp_pixels   the decoded values at their stored depth (a lossless re-encode; a DICOM
                re-exported with a new header, patient id and UIDs)
    fp_phash    a 64-bit DCT perceptual hash of the picture that is embedded (re-encodes,
                resizes, small edits), as 16 hex digits
    fp_bands    the same hash as four 16-bit bands ("0:1a2b", ...): two hashes within Hamming
                distance 3 share at least one band (pigeonhole), so a keyword match on any
                band finds every such candidate in the index itself
    fp_phash256 a finer pHash (16x16 frequencies), 64 hex digits, that confirms a candidate:
                the 64-bit hash sees little more than a picture's layout, and two chest
                X-rays of different patients can share it (measured: distance 2 of 64, 28 of
                256; the planted copies 0 of 256)

`fp_volume` names the volume a slice comes from (NIfTI file, DICOM series): adjacent slices
look alike and are reported apart from duplicates.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict
from scipy.fft import dctn

from pipeline.images import decode, to_rgb
from pipeline.sources import SourceRow

BANDS = 4
# The finer hash's distance that confirms a candidate (of 256 bits). Measured on planted copies:
# JPEG quality 60 of a smooth pattern 14; two patients' synthetic chest X-rays 22 and more.
FINE_DISTANCE = 16
BAND_BITS = 64 // BANDS
# Within this Hamming distance, two hashes always share a band: the index finds them all.
MAX_FOUND_DISTANCE = BANDS - 1
# The payload indexes the audit filters on: the fingerprints, and the split (its question
# "nearest in another split" reads every point's payload without one: 20 times slower).
INDEXES = {
    "fp_sha256": "keyword",
    "fp_pixels": "keyword",
    "fp_bands": "keyword",
    "fp_volume": "keyword",
    "source.split": "keyword",
}


class Fingerprint(BaseModel):
    """One image's fingerprints, as its payload holds them."""

    model_config = ConfigDict(frozen=True)

    fp_sha256: str | None = None
    fp_pixels: str
    fp_phash: str
    fp_bands: list[str]
    fp_phash256: str
    fp_volume: str | None = None

    def payload(self) -> dict:
        return self.model_dump(exclude_none=True)


def fingerprint(record: SourceRow, max_pixels: int, max_bytes: int) -> Fingerprint:
    """The fingerprints of a row whose picture was made (its checks already passed)."""
    if isinstance(record.image, bytes):
        native = decode(record.image, max_pixels, max_bytes)
        sha = hashlib.sha256(record.image).hexdigest()
        pixels, picture = np.asarray(native), to_rgb(native)
    else:
        assert isinstance(record.image, Image.Image)
        sha, picture = record.file_sha256, record.image
        pixels = record.pixels if record.pixels is not None else np.asarray(picture)
    phash = perceptual_hash(picture)
    fine = perceptual_hash(picture, 16)
    return Fingerprint(
        fp_sha256=sha,
        fp_pixels=pixel_digest(pixels),
        fp_phash=f"{phash:016x}",
        fp_bands=bands(phash),
        fp_phash256=f"{fine:064x}",
        fp_volume=_short(record.volume) if record.volume else None,
    )


def pixel_digest(pixels: np.ndarray) -> str:
    """The values, their type and shape: equal only for the same decoded picture."""
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()[:32]


def perceptual_hash(picture: Image.Image, size: int = 8) -> int:
    """pHash (Zauner 2010, as imagehash computes it): the grey picture at 4 x `size` a side,
    its 2-D DCT, the `size` x `size` lowest frequencies against their median."""
    side = 4 * size
    grey = np.asarray(picture.convert("L").resize((side, side), Image.Resampling.LANCZOS))
    low = dctn(grey.astype(np.float64), type=2, norm="ortho")[:size, :size]
    bits = (low > np.median(low)).ravel()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def bands(phash: int) -> list[str]:
    """The hash's bands, each named by its place: a match needs the same bits in the same band."""
    mask = (1 << BAND_BITS) - 1
    return [f"{i}:{(phash >> (BAND_BITS * i)) & mask:04x}" for i in range(BANDS)]


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hashes as `fp_phash` holds them."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _short(name: str) -> str:
    # A volume's name may be a path holding a patient's name: only its hash is kept.
    return hashlib.sha256(name.encode()).hexdigest()[:16]
