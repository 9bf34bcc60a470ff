"""Fingerprints made at ingest, as each reader's rows give them: a byte copy, a lossless
re-encode, a DICOM re-exported with a new header and a NIfTI volume's slices each meet the tier
meant for them, and the perceptual hash's bands find every hash within distance 3."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from pipeline.fingerprint import FINE_DISTANCE, MAX_FOUND_DISTANCE, bands, fingerprint, hamming
from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.schemas import ReadOptions
from pipeline.settings import get_settings
from pipeline.sources import SourceRow, resolve
from pipeline.sources.dicom import DicomSource
from pipeline.sources.nifti import NiftiSource

MAX = 64 * 1024 * 1024


@pytest.fixture(autouse=True)
def deid_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MEDINDEX_DEID_KEY", "fingerprint-test-key")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def encoded(picture: Image.Image, fmt: str, **how: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **how)
    return buffer.getvalue()


def of(data: bytes) -> dict:
    return fingerprint(SourceRow(0, "k", {}, data), MAX, MAX).payload()


def chest() -> Image.Image:
    y, x = np.mgrid[0:256, 0:256]
    grey = (
        128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0) + 40 * ((x - 128) ** 2 + (y - 90) ** 2 < 900)
    )
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")


def test_each_copy_meets_its_tier() -> None:
    picture = chest()
    png = of(encoded(picture, "PNG", compress_level=1))
    assert of(encoded(picture, "PNG", compress_level=1)) == png  # a byte copy: all the same
    recompressed = of(encoded(picture, "PNG", compress_level=9))
    assert recompressed["fp_sha256"] != png["fp_sha256"]
    assert recompressed["fp_pixels"] == png["fp_pixels"]  # lossless: the same values
    for edited in (
        encoded(picture, "JPEG", quality=60),
        encoded(picture.resize((180, 180)), "PNG"),
    ):
        near = of(edited)
        assert near["fp_pixels"] != png["fp_pixels"]
        assert hamming(near["fp_phash"], png["fp_phash"]) <= MAX_FOUND_DISTANCE
        assert hamming(near["fp_phash256"], png["fp_phash256"]) <= FINE_DISTANCE
        assert set(near["fp_bands"]) & set(png["fp_bands"])
    other = of(encoded(picture.rotate(90), "PNG"))
    assert hamming(other["fp_phash"], png["fp_phash"]) > 10


def test_hashes_within_distance_three_share_a_band() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=int(rng.integers(0, MAX_FOUND_DISTANCE + 1)), replace=False)
        b = a
        for bit in flips:
            b ^= 1 << int(bit)
        assert set(bands(a)) & set(bands(b))


def test_a_dicom_reexported_with_a_new_patient_keeps_its_pixels(tmp_path: Path) -> None:
    folder = write_dicom(tmp_path / "dicom", 8, 3)
    original = next(p for p in sorted(folder.rglob("*.dcm")) if dcmread(p).Modality == "CT")
    ds = dcmread(original)
    ds.PatientID, ds.PatientName = "SOMEONE-ELSE", "ELSE^SOMEONE"
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, tag, generate_uid())
    ds.save_as(folder / "reexport.dcm")
    options = ReadOptions(deidentify=False)  # keys are paths: the test finds its files
    source = DicomSource(resolve(str(folder), fmt="dicom", options=options))
    rows = {r.key: r for r in source.read(list(range(len(source))), MAX) if r.refusal is None}
    prints = {key: fingerprint(r, MAX, MAX).payload() for key, r in rows.items()}
    before, after = prints[original.relative_to(folder).as_posix()], prints["reexport.dcm"]
    assert (
        rows["reexport.dcm"].payload["patient"]
        != rows[original.relative_to(folder).as_posix()].payload["patient"]
    )
    assert after["fp_pixels"] == before["fp_pixels"]
    assert after["fp_sha256"] != before["fp_sha256"]
    assert after["fp_volume"] != before["fp_volume"]  # a series of its own
    others = [fp for key, fp in prints.items() if key not in ("reexport.dcm",)]
    assert sum(fp["fp_pixels"] == before["fp_pixels"] for fp in others) == 1
    assert sum(fp["fp_volume"] == before["fp_volume"] for fp in others) > 1  # the CT series


def test_slices_of_one_nifti_volume_share_it(tmp_path: Path) -> None:
    folder = write_brain_mri(tmp_path / "mri", 2, 5)
    options = ReadOptions(nifti_unmasked_slices=3)
    source = NiftiSource(resolve(str(folder), fmt="nifti", options=options))
    rows = [r for r in source.read(list(range(len(source))), MAX) if r.refusal is None]
    prints = [fingerprint(r, MAX, MAX).payload() for r in rows]
    assert all("fp_sha256" not in fp for fp in prints)  # a slice is no file of its own
    volumes = {fp["fp_volume"] for fp in prints}
    assert len(volumes) < len(prints)  # several slices (or modalities) per volume
    assert len({fp["fp_pixels"] for fp in prints}) == len(prints)
