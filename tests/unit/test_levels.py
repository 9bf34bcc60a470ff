"""A picture before its window (`Levels`), as the page's viewer gets it from a reader: through
the window it was embedded with it is the embedded picture; the file's own windows and the CT
presets are offered; pixel spacing gives its proportions. No stack: the readers alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from pipeline.images import ImageError
from pipeline.picture import levels_of, picture_of
from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.schemas import ReadOptions
from pipeline.settings import get_settings
from pipeline.sources import SourceError, resolve
from pipeline.sources.dicom import DicomSource
from pipeline.sources.nifti import NiftiSource
from pipeline.sources.table import TableSource
from pipeline.sources.window import render

MAX_BYTES = 32 * 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def deid_key() -> Iterator[None]:
    """The de-identification key a worker that reads DICOM is started with."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDINDEX_DEID_KEY", "test-levels-key")
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()  # the environment as it was


@pytest.fixture(scope="module")
def dicom_rows(tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = write_dicom(tmp_path_factory.mktemp("d"), 14, 3)
    source = DicomSource(resolve(str(folder), fmt="dicom"))
    return [(source, r) for r in source.read(list(range(len(source))), MAX_BYTES) if r.image]


@pytest.fixture(scope="module")
def nifti_source(tmp_path_factory: pytest.TempPathFactory) -> NiftiSource:
    folder = write_brain_mri(tmp_path_factory.mktemp("n"), 2, seed=4)
    return NiftiSource(resolve(str(folder), fmt="nifti"))


def test_dicom_levels_through_their_embedded_window_are_the_embedded_picture(
    dicom_rows: list,
) -> None:
    kinds = set()
    for source, record in dicom_rows:
        if record.image.mode != "L":
            continue  # colour: no grey levels
        levels = source.levels(record.row, record.key, MAX_BYTES)
        assert levels.embedded is not None
        assert (render(levels, levels.embedded) == np.asarray(record.image)).all(), record.key
        kinds.add((record.payload["modality"], levels.inverted))
    assert {"CT", "MR", "CR"} <= {modality for modality, _ in kinds}


def test_a_ct_offers_its_own_windows_then_the_presets_and_each_renders_anew(
    dicom_rows: list,
) -> None:
    source, record = next((s, r) for s, r in dicom_rows if r.payload["modality"] == "CT")
    levels = source.levels(record.row, record.key, MAX_BYTES)
    offered = [(w.name, w.window.center, w.window.width) for w in levels.windows()]
    assert offered[:2] == [("file window 1", 40, 400), ("file window 2", -600, 1500)]
    assert [name for name, *_ in offered[2:]] == ["lung", "soft tissue", "bone", "brain"]
    pictures = {
        (c, w): render(levels, n.window).tobytes()
        for (_, c, w), n in zip(offered, levels.windows(), strict=True)
    }
    assert len(set(pictures.values())) == len(pictures) == 4  # each window its own picture
    assert levels.spacing_mm == tuple(record.payload["pixel_spacing"])
    mr = next((s, r) for s, r in dicom_rows if r.payload["modality"] == "MR")
    assert not mr[0].levels(mr[1].row, mr[1].key, MAX_BYTES).hounsfield  # no HU presets for MR


def test_dicom_payload_names_the_slice(dicom_rows: list) -> None:
    source, record = next((s, r) for s, r in dicom_rows if r.payload["modality"] == "CT")
    header = dcmread(Path(source.root) / source.instances[record.row].path)
    assert record.payload["instance_number"] == int(header.InstanceNumber)
    assert record.payload["slice_location"] == float(header.SliceLocation)
    assert record.payload["series_description"] == "CT CHEST W/O CONTRAST"


def test_nifti_levels_are_the_embedded_slice_with_its_spacing(
    nifti_source: NiftiSource, tmp_path: Path
) -> None:
    rows = nifti_source.read(list(range(len(nifti_source))), MAX_BYTES)
    for record in rows:
        levels = nifti_source.levels(record.row, record.key, MAX_BYTES)
        embedded = render(levels, levels.embedded).astype(int)
        assert np.abs(embedded - np.asarray(record.image)).max() <= 1, record.key  # rounding
        assert levels.spacing_mm == tuple(record.payload["pixel_spacing"]) == (1.0, 1.0)
        assert not levels.hounsfield and [w.name for w in levels.windows()] == []


def test_nifti_spacing_follows_the_displayed_axes(tmp_path: Path) -> None:
    """Voxels of 0.5 mm along x (the picture's columns) and 1.5 along y (its rows)."""
    folder = write_brain_mri(tmp_path, 1, seed=4)
    path = next(folder.rglob("*_t1.nii.gz"))
    image = nib.load(path)
    affine = image.affine.copy()
    affine[0, 0], affine[1, 1] = -0.5, -1.5
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), path)
    source = NiftiSource(resolve(str(folder), fmt="nifti"))
    row = next(i for i, e in enumerate(source.entries) if e.path.endswith("_t1.nii.gz"))
    (record,) = source.read([row], MAX_BYTES)
    assert record.payload["pixel_spacing"] == [1.5, 0.5]
    assert source.levels(row, record.key, MAX_BYTES).spacing_mm == (1.5, 0.5)


def test_levels_of_a_point_refuse_what_has_none_or_changed(
    nifti_source: NiftiSource, tmp_path: Path
) -> None:
    (record,) = nifti_source.read([0], MAX_BYTES)
    levels = levels_of(record.payload["source"], get_settings())
    assert levels.values.shape == np.asarray(record.image).shape
    moved = record.payload["source"] | {"key": "another/file.nii.gz"}
    with pytest.raises(ImageError, match=r"no longer 'another/file\.nii\.gz'"):
        levels_of(moved, get_settings())
    assert picture_of(record.payload["source"], get_settings()).size == record.image.size


def test_formats_of_8_bit_pictures_have_no_levels(tmp_path: Path) -> None:
    Image.new("L", (8, 6)).save(tmp_path / "a.png")
    (tmp_path / "table.csv").write_text("path,label\na.png,x\n")
    table = TableSource(resolve(str(tmp_path / "table.csv"), fmt="table"))
    with pytest.raises(SourceError, match="table pictures have no grey levels"):
        table.levels(0, None, MAX_BYTES)


def test_read_options_still_choose_the_embedded_window(dicom_rows: list) -> None:
    source, record = next((s, r) for s, r in dicom_rows if r.payload["modality"] == "CT")
    options = ReadOptions(dicom_window="lung")
    lung = DicomSource(resolve(str(source.root), fmt="dicom", options=options))
    levels = lung.levels(record.row, record.key, MAX_BYTES)
    assert (levels.embedded.center, levels.embedded.width) == (-600, 1500)
