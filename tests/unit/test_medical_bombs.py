"""Decompression bombs in the medical readers (issue 21, items 8 and 9): a deflated DICOM
dataset and a gzipped NIfTI volume cost a bounded amount of memory and CPU, refused before
they are inflated or read, at ingest (the reader's listing and rows) and as uploads
(`/search/image` and `/embed` call the readers' `sniff` and `query_picture`)."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipeline.images import ImageError
from pipeline.samples.bombs import dicom_deflate_bomb, nifti_volume_bomb
from pipeline.schemas import ReadOptions
from pipeline.settings import get_settings
from pipeline.sources import dicom, nifti, resolve
from pipeline.sources.dicom import DicomSource
from pipeline.sources.nifti import NiftiSource

MIB = 1024 * 1024
MAX_BYTES = 32 * MIB  # MEDINDEX_MAX_IMAGE_BYTES' default


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Default bounds, as a worker or the search API reads them; a test may change one."""
    monkeypatch.setenv("MEDINDEX_DEID_KEY", "test-secret-key")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def costs(call: Callable[[], object]) -> tuple[object, float, float]:
    """What `call` returns (or the ImageError it raises), its CPU seconds and the peak MiB it
    allocated (the inflated bytes and pydicom's parse are Python allocations)."""
    tracemalloc.start()
    started = time.process_time()
    try:
        outcome = call()
    except ImageError as exc:
        outcome = exc
    cpu = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    return outcome, cpu, peak


def test_a_510_kib_deflated_dicom_is_refused_before_it_inflates(tmp_path: Path) -> None:
    """Issue 21's upload: 510 KiB that inflate to 512 MiB of empty elements took 1 GiB of
    memory and minutes of CPU in pydicom (it inflates all of it, then parses)."""
    bomb = dicom_deflate_bomb(512 * MIB)
    assert len(bomb) < 520 * 1024 and dicom.sniff(bomb)
    refusal, cpu, peak = costs(lambda: dicom.query_picture(bomb, ReadOptions()))
    assert str(refusal) == f"deflated dataset inflates to over {MAX_BYTES} bytes (the limit)"
    assert cpu < 2 and peak < 3 * MAX_BYTES / MIB, (cpu, peak)
    # At ingest the same file is a row that fails with the reason; the others are read.
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    (tmp_path / "plain.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    source, cpu, _ = costs(lambda: open_dicom(tmp_path))
    bombed, plain = source.read([0, 1], MAX_BYTES)
    assert bombed.refusal == str(refusal) and plain.refusal is None
    assert cpu < 2, cpu


def test_a_deflated_dicom_within_the_bound_reads_as_pydicom_reads_it(tmp_path: Path) -> None:
    """pydicom's own deflated image (57:1), and one written by pydicom here: inflated by the
    reader, pictures as pydicom decodes them, uploaded or ingested."""
    original = dcmread(get_testdata_file("CT_small.dcm"))
    original.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    original.save_as(tmp_path / "ct.dcm", enforce_file_format=True)  # pydicom deflates it
    shipped = Path(get_testdata_file("image_dfl.dcm"))
    (tmp_path / "dfl.dcm").write_bytes(shipped.read_bytes())
    source = open_dicom(tmp_path)
    for row, name in enumerate(("ct.dcm", "dfl.dcm")):
        path = tmp_path / name
        assert dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        (record,) = source.read([row], MAX_BYTES)
        uploaded = np.asarray(dicom.query_picture(path.read_bytes(), ReadOptions()))
        assert record.refusal is None and np.array_equal(np.asarray(record.image), uploaded)
        pixels = dcmread(path).pixel_array.astype(float)
        assert np.corrcoef(uploaded.ravel(), pixels.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("axial_axis", [2, 0])
def test_a_510_kib_nifti_declaring_512_mib_is_refused_before_a_voxel_is_read(
    axial_axis: int,
) -> None:
    """Issue 21's upload: 512x1024x1024 voxels in a 510 KiB gzip; its axial slices are within
    the plane bound, so only the volume's voxel count can refuse it."""
    bomb = nifti_volume_bomb((512, 1024, 1024), axial_axis)
    assert len(bomb) < 520 * 1024 and nifti.sniff(bomb)
    refusal, cpu, peak = costs(lambda: nifti.query_picture(bomb, ReadOptions()))
    assert str(refusal) == (
        f"uploaded file: a volume of {512 * MIB} voxels [512, 1024, 1024] (limit {256 * MIB})"
    )
    assert cpu < 0.5 and peak < 16, (cpu, peak)


def test_the_bytes_inflated_to_reach_a_volume_are_bounded(
    tmp_path: Path, settings: pytest.MonkeyPatch
) -> None:
    """A volume within the voxel bound can still inflate beyond the byte bound (wide voxels,
    or a header that puts its voxels far into the file): refused from the header alone."""
    volume = np.random.default_rng(0).random((64, 64, 40))  # float64: 1.25 MiB
    save(tmp_path / "A" / "A_t1.nii.gz", volume)
    data = (tmp_path / "A" / "A_t1.nii.gz").read_bytes()
    assert np.asarray(nifti.query_picture(data, ReadOptions())).shape == (64, 64)
    settings.setenv("MEDINDEX_MAX_VOLUME_BYTES", str(MIB))
    get_settings.cache_clear()
    with pytest.raises(ImageError, match=r"reading the volume inflates 1311072 bytes \(limit"):
        nifti.query_picture(data, ReadOptions())
    (record,) = open_nifti(tmp_path).read([0], MAX_BYTES)
    assert "reading the volume inflates 1311072 bytes" in record.refusal
    settings.setenv("MEDINDEX_MAX_VOLUME_VOXELS", "100000")
    get_settings.cache_clear()
    (record,) = open_nifti(tmp_path).read([0], MAX_BYTES)
    assert record.refusal == "A/A_t1.nii.gz: a volume of 163840 voxels [64, 64, 40] (limit 100000)"


def test_slices_across_the_files_order_cost_one_pass_over_it(tmp_path: Path) -> None:
    """A volume whose axial axis comes first in the file spans the whole file with each
    slice: read one slice at a time, a gzipped file was inflated once per slice (17 times).
    Read in the file's order, it costs about what the same volume stored axial-last does."""
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 1000, (128, 192, 160), dtype=np.int16)  # x, y, z (axial)
    save(tmp_path / "last" / "A" / "A_t1.nii.gz", volume)
    axial_first = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    save(tmp_path / "first" / "A" / "A_t1.nii.gz", volume.transpose(2, 0, 1), axial_first)
    seconds = {}
    for order in ("last", "first"):
        data = (tmp_path / order / "A" / "A_t1.nii.gz").read_bytes()
        picture, seconds[order], _ = costs(lambda d=data: nifti.query_picture(d, ReadOptions()))
        assert np.asarray(picture).shape == (192, 128)
    assert seconds["first"] < 3 * seconds["last"] + 0.2, seconds


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def open_dicom(folder: Path) -> DicomSource:
    return DicomSource(resolve(str(folder), fmt="dicom", options=ReadOptions()))


def open_nifti(folder: Path) -> NiftiSource:
    return NiftiSource(resolve(str(folder), fmt="nifti", options=ReadOptions()))


def test_the_bombs_are_what_they_say(tmp_path: Path) -> None:
    """The writers above: the DICOM bomb's dataset is a CT header followed by zeros; the
    NIfTI bomb's header declares its shape and orientation."""
    small = dicom_deflate_bomb(MIB)
    ds = dcmread(io.BytesIO(small))
    assert ds.Modality == "CT" and ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    (tmp_path / "v.nii.gz").write_bytes(nifti_volume_bomb((8, 16, 32), axial_axis=0))
    image = nib.load(tmp_path / "v.nii.gz")
    assert image.shape == (8, 16, 32) and nib.aff2axcodes(image.affine) == ("S", "A", "R")
    assert not np.asarray(image.dataobj).any()
