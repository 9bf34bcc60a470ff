"""The `nifti` reader on files written by nibabel: which slice, which window, which box, what
the payload says, and bad files failing alone with their reason."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageError
from pipeline.samples.brain_mri import CLASSES, MODALITIES, write_brain_mri
from pipeline.schemas import ReadOptions
from pipeline.sources import SourceError, SourceRow, resolve
from pipeline.sources.nifti import NiftiSource, query_picture, sniff

MAX_BYTES = 32 * 1024 * 1024
SHAPE = (32, 40, 24)  # x (right-left), y (posterior-anterior), z (inferior-superior)
ZOOMS = (1.0, 1.5, 3.0)
RAS = np.diag([*ZOOMS, 1.0])  # voxel axes run to the right, the front and the top


def save(path: Path, data: np.ndarray, affine: np.ndarray = RAS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def ramp() -> np.ndarray:
    """A head-like volume with a smooth ramp of intensities (10..80), nothing hot."""
    i, j, k = np.indices(SHAPE)
    return (10 + i + j + k // 4).astype(np.int16)


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sample cases: the fifth with an all-zero mask, the sixth without one."""
    return write_brain_mri(tmp_path_factory.mktemp("brain"), n=6, seed=7)


def open_source(folder: Path, **options: object) -> NiftiSource:
    return NiftiSource(resolve(str(folder), fmt="nifti", options=ReadOptions(**options)))


def read_all(source: NiftiSource) -> dict[str, SourceRow]:
    return {row.key: row for row in source.read(list(range(len(source))), MAX_BYTES)}


def pixels(row: SourceRow) -> np.ndarray:
    assert row.refusal is None, row.refusal
    assert isinstance(row.image, Image.Image) and row.image.mode == "L"
    return np.asarray(row.image)


def shown_at(i: int, j: int) -> tuple[int, int]:
    """Where voxel (i, j) of an RAS+ slice appears: anterior up, patient's right on the left."""
    return SHAPE[1] - 1 - j, SHAPE[0] - 1 - i


BLOCK = (slice(3, 7), slice(30, 35))  # a bright block's voxels (x, y): front right


def shows_block(picture: np.ndarray) -> bool:
    """Whether the block, and nothing round it, is white where anterior-up puts it. (Elsewhere
    the ramp's top 0.5% is white too: that is the window's clipping.)"""
    near = [(i, j) for i in range(0, 10) for j in range(27, 38)]
    white = {shown_at(i, j) for i, j in near if picture[shown_at(i, j)] == 255}
    return white == {shown_at(i, j) for i in range(3, 7) for j in range(30, 35)}


def tumour_case(folder: Path) -> np.ndarray:
    """Case `A`: a mask whose largest cross-section (6x5 voxels) is at z=15, smaller ones at
    z=5 (25 voxels) and z=14, 16; the t1 has a bright block only in slice 15."""
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[10:16, 20:25, 15] = 4
    mask[11:14, 21:24, 14] = 1
    mask[11:14, 21:24, 16] = 2
    mask[2:7, 2:7, 5] = 2
    t1 = ramp()
    t1[(*BLOCK, 15)] = 200
    save(folder / "A" / "A_t1.nii.gz", t1)
    save(folder / "A" / "A_seg.nii.gz", mask)
    return t1


def test_the_largest_tumour_slice_is_the_one_the_mask_puts_it_in(tmp_path: Path) -> None:
    tumour_case(tmp_path)
    (row,) = open_source(tmp_path).read([0], MAX_BYTES)
    payload = row.payload
    assert row.key == "A/A_t1.nii.gz"
    assert payload["slice_index"] == 15 and payload["slice_choice"] == "largest_tumour"
    assert payload["mask"] == "present" and payload["case_id"] == "A"
    assert payload["modality"] == "t1"
    assert payload["tumour_area_voxels"] == 30
    assert payload["tumour_area_mm2"] == pytest.approx(30 * 1.0 * 1.5)  # in-plane voxels only
    assert payload["volume_shape"] == [32, 40, 24]
    assert payload["voxel_size_mm"] == [1.0, 1.5, 3.0]
    assert "volumes" not in payload and "tumour_class" not in payload
    assert payload["source"] == {
        "dataset": str(tmp_path.resolve()),
        "split": "train",
        "row": 0,
        "key": "A/A_t1.nii.gz",
        "format": "nifti",
    }
    picture = pixels(row)
    assert picture.shape == (SHAPE[1], SHAPE[0])
    assert shows_block(picture)  # slice 15's block, anterior and on the patient's right
    assert shown_at(3, 30)[0] < SHAPE[1] / 2 and shown_at(3, 30)[1] > SHAPE[0] / 2


def test_orientation_is_the_same_whatever_the_voxel_order(tmp_path: Path) -> None:
    """The same head stored three ways (RAS+, BraTS's reversed x and y, axial axis first)
    gives the same picture and tumour slice."""
    t1 = tumour_case(tmp_path / "ras")
    mask = np.asarray(nib.load(tmp_path / "ras" / "A" / "A_seg.nii.gz").dataobj)
    flipped = np.diag([-ZOOMS[0], -ZOOMS[1], ZOOMS[2], 1.0])
    save(tmp_path / "lps" / "A" / "A_t1.nii.gz", t1[::-1, ::-1], flipped)
    save(tmp_path / "lps" / "A" / "A_seg.nii.gz", mask[::-1, ::-1], flipped)
    axial_first = np.array(
        [[0, ZOOMS[0], 0, 0], [0, 0, ZOOMS[1], 0], [ZOOMS[2], 0, 0, 0], [0, 0, 0, 1]]
    )
    save(tmp_path / "zxy" / "A" / "A_t1.nii.gz", t1.transpose(2, 0, 1), axial_first)
    save(tmp_path / "zxy" / "A" / "A_seg.nii.gz", mask.transpose(2, 0, 1), axial_first)
    rows = [open_source(tmp_path / name).read([0], MAX_BYTES)[0] for name in ("ras", "lps", "zxy")]
    for row in rows[1:]:
        assert np.array_equal(pixels(row), pixels(rows[0]))
        assert row.payload["slice_index"] == 15
        assert row.payload["tumour_area_mm2"] == pytest.approx(45.0)
    assert rows[2].payload["volume_shape"] == [24, 32, 40]


def test_crop_is_the_tumour_box_with_its_margin_clipped_to_the_slice(tmp_path: Path) -> None:
    tumour_case(tmp_path)
    edge = np.zeros(SHAPE, dtype=np.uint8)
    edge[0:3, 30:40, 8] = 1  # against the right and the front edges
    save(tmp_path / "B" / "B_t1.nii.gz", ramp())
    save(tmp_path / "B" / "B_seg.nii.gz", edge)
    rows = read_all(open_source(tmp_path, nifti_variant="crop", nifti_crop_margin=4))
    inner, clipped = rows["A/A_t1.nii.gz"], rows["B/B_t1.nii.gz"]
    assert inner.image.size == (6 + 2 * 4, 5 + 2 * 4)  # (width: x, height: y)
    assert clipped.image.size == (3 + 4, 10 + 4)
    assert clipped.payload["slice_index"] == 8
    # The crop is the whole slice's box: the same pixels, windowed the same.
    whole = read_all(open_source(tmp_path))["A/A_t1.nii.gz"]
    rows_shown, cols_shown = shown_at(16 + 4 - 1, 25 + 4 - 1)
    box = pixels(whole)[rows_shown : rows_shown + 13, cols_shown : cols_shown + 14]
    assert np.array_equal(pixels(inner), box)
    assert inner.payload["source"]["options"] == {"nifti_variant": "crop", "nifti_crop_margin": 4}


def test_one_hot_voxel_does_not_ruin_the_window(tmp_path: Path) -> None:
    volume = ramp().astype(np.float32)
    volume[5, 5, 12] = volume[5, 5, 0] = 1e6  # one voxel, in the picture and in the sample
    save(tmp_path / "C" / "C_t2.nii.gz", volume)
    (row,) = open_source(tmp_path).read([0], MAX_BYTES)
    picture = pixels(row)
    assert row.payload["slice_index"] == 12
    assert len(np.unique(picture)) > 50  # the ramp keeps its grey levels
    assert 60 < np.median(picture) < 200
    assert picture[shown_at(5, 5)] == 255  # the hot voxel is clipped, not the scale
    raw = volume[:, :, 12]
    min_max = ((raw - volume.min()) / (volume.max() - volume.min()) * 255).astype(np.uint8)
    assert len(np.unique(min_max)) <= 2  # what a raw min-max would have shown: black


def test_without_a_mask_the_middle_or_evenly_spaced_slices_and_the_payload_says_so(
    tmp_path: Path,
) -> None:
    tumour_case(tmp_path)
    save(tmp_path / "D" / "D_flair.nii.gz", ramp())
    middle = read_all(open_source(tmp_path))["D/D_flair.nii.gz"].payload
    assert (middle["slice_index"], middle["slice_choice"], middle["mask"]) == (
        12,
        "middle",
        "absent",
    )
    assert "tumour_area_voxels" not in middle and "tumour_area_mm2" not in middle

    source = open_source(tmp_path, nifti_unmasked_slices=3)
    assert len(source) == 1 + 3  # the masked case keeps one row; the other gets three
    rows = read_all(source)
    spaced = [rows[f"D/D_flair.nii.gz#spaced-{n}-of-3"].payload for n in (1, 2, 3)]
    assert [p["slice_index"] for p in spaced] == [6, 12, 18]
    assert {p["slice_choice"] for p in spaced} == {"spaced"}
    assert rows["A/A_t1.nii.gz"].payload["slice_index"] == 15


def test_an_all_zero_mask_gives_the_middle_slice_and_says_so(tmp_path: Path) -> None:
    save(tmp_path / "E" / "E_t1ce.nii.gz", ramp())
    save(tmp_path / "E" / "E_seg.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    (row,) = open_source(tmp_path, nifti_variant="crop").read([0], MAX_BYTES)
    payload = row.payload
    assert (payload["slice_index"], payload["slice_choice"], payload["mask"]) == (
        12,
        "middle",
        "empty",
    )
    assert payload["tumour_area_voxels"] == 0 and payload["tumour_area_mm2"] == 0
    assert row.image.size == (SHAPE[0], SHAPE[1])  # nothing to crop to: the whole slice


def test_a_4d_volume_gives_its_first_volume_and_says_so(tmp_path: Path) -> None:
    first = ramp()
    first[(*BLOCK, 12)] = 200
    volumes = np.stack([first, ramp(), ramp() * 2], axis=-1)
    save(tmp_path / "F" / "F_t1.nii.gz", volumes)
    (row,) = open_source(tmp_path).read([0], MAX_BYTES)
    payload = row.payload
    assert (payload["volume_index"], payload["volumes"]) == (0, 3)
    assert payload["volume_shape"] == [32, 40, 24, 3]
    assert shows_block(pixels(row))  # the first volume's block


def test_bad_files_fail_alone_with_their_reason(tmp_path: Path) -> None:
    tumour_case(tmp_path)
    save(tmp_path / "G" / "G_t1.nii.gz", ramp()[:, :, 0])  # 2-D
    whole = gzip.compress(nib.Nifti1Image(ramp(), RAS).to_bytes())
    (tmp_path / "H").mkdir()
    (tmp_path / "H" / "H_t1.nii.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "I").mkdir()
    (tmp_path / "I" / "I_t1.nii.gz").write_bytes(b"this is not a volume\n" * 40)
    (tmp_path / "J").mkdir()
    plain = nib.Nifti1Image(ramp(), RAS).to_bytes()
    (tmp_path / "J" / "J_t1.nii").write_bytes(plain[: len(plain) // 3])
    save(tmp_path / "K" / "K_t1.nii.gz", ramp())
    save(tmp_path / "K" / "K_t2.nii.gz", ramp())
    (tmp_path / "K" / "K_seg.nii.gz").write_bytes(whole[:400])  # a truncated mask
    save(tmp_path / "L" / "L_t1.nii.gz", ramp())
    save(tmp_path / "L" / "L_seg.nii.gz", np.zeros((32, 40, 20), dtype=np.uint8))
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    save(tmp_path / "M" / "M_t1.nii.gz", rgb)
    rows = read_all(open_source(tmp_path))
    assert rows["A/A_t1.nii.gz"].refusal is None
    assert "mask's grid [32, 40, 20] does not match the image's [32, 40, 24]" in (
        rows["L/L_t1.nii.gz"].refusal
    )
    assert "are not intensities" in rows["M/M_t1.nii.gz"].refusal
    assert "2-D image" in rows["G/G_t1.nii.gz"].refusal
    assert "H/H_t1.nii.gz: corrupt or truncated NIfTI" in rows["H/H_t1.nii.gz"].refusal
    assert "not a NIfTI file" in rows["I/I_t1.nii.gz"].refusal
    assert "J/J_t1.nii: corrupt or truncated NIfTI" in rows["J/J_t1.nii"].refusal
    for key in ("K/K_t1.nii.gz", "K/K_t2.nii.gz"):
        assert rows[key].refusal.startswith("mask K/K_seg.nii.gz: corrupt or truncated")
        assert rows[key].image is None and rows[key].payload["case_id"] == "K"
    for row in rows.values():
        assert "\n" not in (row.refusal or "")


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    tumour_case(tmp_path)
    (row,) = open_source(tmp_path).read([0], 1000)
    assert row.refusal == "A/A_t1.nii.gz: image file is 1517 bytes (limit 1000)"


def test_sample_data_reads_whole_with_its_tumour_classes(brain: Path) -> None:
    folder = brain
    source = open_source(folder, labels_csv="labels.csv")
    assert len(source) == 6 * 4
    assert source.schema.label_field == "tumour_class"
    assert dict(source.schema.indexes()) == {
        "case_id": "keyword",
        "modality": "keyword",
        "mask": "keyword",
        "slice_choice": "keyword",
        "slice_index": "integer",
        "tumour_area_voxels": "integer",
        "tumour_area_mm2": "float",
        "volume_shape": "integer",
        "voxel_size_mm": "float",
        "pixel_spacing": "float",
        "volume_index": "integer",
        "volumes": "integer",
        "tumour_class": "keyword",
    }
    with (folder / "labels.csv").open() as file:
        classes = {row["case_id"]: row["tumour_class"] for row in csv.DictReader(file)}
    rows = source.read(list(range(len(source))), MAX_BYTES)
    assert all(row.refusal is None for row in rows)
    for row in rows:
        assert row.payload["tumour_class"] == classes[row.payload["case_id"]]
        assert row.image.size == (96, 96)
    by_case = {row.payload["case_id"]: row.payload for row in rows}
    assert by_case["BraTS_006"]["mask"] == "absent" and by_case["BraTS_005"]["mask"] == "empty"
    assert by_case["BraTS_005"]["slice_choice"] == by_case["BraTS_006"]["slice_choice"] == "middle"
    assert {by_case[f"BraTS_00{i}"]["slice_choice"] for i in range(1, 5)} == {"largest_tumour"}
    assert by_case["BraTS_001"]["voxel_size_mm"] == [1.0, 1.0, 2.0]
    assert NiftiSource(source.ref).schema == source.schema
    assert open_source(folder).schema.label_field is None


def test_the_class_column_is_found_in_a_brats_style_mapping(tmp_path: Path) -> None:
    tumour_case(tmp_path)
    save(tmp_path / "D" / "D_flair.nii.gz", ramp())
    (tmp_path / "name_mapping.csv").write_text(
        "Grade,BraTS_2019_subject_ID,BraTS_2020_subject_ID\nHGG,BraTS19_1,A\nLGG,,D\n"
    )
    rows = read_all(open_source(tmp_path, labels_csv=str(tmp_path / "name_mapping.csv")))
    assert rows["A/A_t1.nii.gz"].payload["tumour_class"] == "HGG"
    assert rows["D/D_flair.nii.gz"].payload["tumour_class"] == "LGG"
    (tmp_path / "other.csv").write_text("case,diagnosis\nX,glioma\n")
    with pytest.raises(SourceError, match="no column holds this dataset's case ids"):
        open_source(tmp_path, labels_csv="other.csv")
    (tmp_path / "vague.csv").write_text("case,a,b\nA,1,2\n")
    with pytest.raises(SourceError, match="which column is the tumour class"):
        open_source(tmp_path, labels_csv="vague.csv")
    with pytest.raises(SourceError, match="cannot read it"):
        open_source(tmp_path, labels_csv="missing.csv")


def test_keys_are_paths_that_do_not_move_when_the_folder_grows(tmp_path: Path) -> None:
    tumour_case(tmp_path)
    save(tmp_path / "D" / "D_flair.nii.gz", ramp())
    before = read_all(open_source(tmp_path))
    assert list(before) == ["A/A_t1.nii.gz", "D/D_flair.nii.gz"]
    save(tmp_path / "0" / "0_t1.nii.gz", ramp())  # sorts first: every row number moves
    (tmp_path / "notes.txt").write_text("not a volume")
    after = read_all(open_source(tmp_path))
    assert list(after) == ["0/0_t1.nii.gz", "A/A_t1.nii.gz", "D/D_flair.nii.gz"]
    for key, row in before.items():
        assert np.array_equal(pixels(after[key]), pixels(row))
        assert after[key].payload["source"]["key"] == key
    assert open_source(tmp_path).keys.fingerprint == open_source(tmp_path).keys.fingerprint


def test_cases_are_found_by_name_in_brats_2023_and_flat_layouts(tmp_path: Path) -> None:
    save(tmp_path / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2f.nii.gz", ramp())
    save(tmp_path / "flat" / "P7_T1.nii", ramp())
    save(tmp_path / "flat" / "P7_seg.nii", np.zeros(SHAPE, dtype=np.uint8))
    (tmp_path / "flat" / "._P7_T1.nii").write_bytes(b"macOS resource fork")
    rows = read_all(open_source(tmp_path))
    assert {
        (r.payload["case_id"], r.payload["modality"], r.payload["mask"]) for r in rows.values()
    } == {
        ("BraTS-GLI-00001-000", "t2f", "absent"),
        ("P7", "t1", "empty"),
    }


def test_detect_looks_for_nifti_files_at_any_depth(tmp_path: Path) -> None:
    save(tmp_path / "deep" / "a" / "b" / "c" / "x.nii.gz", ramp())
    (tmp_path / "pngs").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "pngs" / "x.png")
    (tmp_path / "pngs" / "labels.csv").write_text("case_id,tumour_class\n")
    assert NiftiSource.detect(tmp_path / "deep")
    assert not NiftiSource.detect(tmp_path / "pngs")
    assert not NiftiSource.detect(tmp_path / "deep" / "a" / "b" / "c" / "x.nii.gz")
    with pytest.raises(SourceError, match="no NIfTI images"):
        open_source(tmp_path / "pngs")


def test_an_uploaded_file_gives_the_picture_ingest_makes_without_a_mask(tmp_path: Path) -> None:
    volume = ramp()
    volume[(*BLOCK, 12)] = 200
    gz = save(tmp_path / "Q" / "Q_t1.nii.gz", volume)
    plain = save(tmp_path / "R" / "R_t1.nii", volume)
    rows = read_all(open_source(tmp_path))
    for path in (gz, plain):
        data = path.read_bytes()
        assert sniff(data)
        picture = query_picture(data, ReadOptions())
        assert picture.mode == "L"
        assert np.array_equal(
            np.asarray(picture), pixels(rows[path.relative_to(tmp_path).as_posix()])
        )
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    for garbage in (png.getvalue(), b"", gzip.compress(b"hello" * 100), gz.read_bytes()[:300]):
        with pytest.raises(ImageError):
            query_picture(garbage, ReadOptions())
    assert not sniff(png.getvalue()) and not sniff(gzip.compress(b"hello" * 100))
    with pytest.raises(ImageError, match="2-D"):
        query_picture(nib.Nifti1Image(volume[:, :, 0], RAS).to_bytes(), ReadOptions())


def test_sample_data_is_brats_shaped_deterministic_and_its_classes_differ(
    brain: Path, tmp_path: Path
) -> None:
    first = brain
    again = write_brain_mri(tmp_path / "again", n=6, seed=7)
    other = write_brain_mri(tmp_path / "other", n=1, seed=8)
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert names == sorted(
        ["labels.csv"]
        + [f"BraTS_00{i}/BraTS_00{i}_{m}.nii.gz" for i in range(1, 7) for m in MODALITIES]
        + [f"BraTS_00{i}/BraTS_00{i}_seg.nii.gz" for i in range(1, 6)]  # 6: no mask
    )
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes()
    t1 = "BraTS_001/BraTS_001_t1.nii.gz"
    assert (first / t1).read_bytes() != (other / t1).read_bytes()

    with (first / "labels.csv").open() as file:
        classes = {row["case_id"]: row["tumour_class"] for row in csv.DictReader(file)}
    assert sorted(classes.values()) == sorted(CLASSES * 2)
    areas: dict[str, int] = {}
    for case in (f"BraTS_00{i}" for i in range(1, 5)):  # 5: all-zero mask, 6: none
        image = nib.load(first / case / f"{case}_t1ce.nii.gz")
        assert image.shape == (96, 96, 64) and image.header.get_zooms() == (1.0, 1.0, 2.0)
        seg = np.asarray(nib.load(first / case / f"{case}_seg.nii.gz").dataobj)
        t1ce = np.asarray(image.dataobj).astype(np.float32)
        flair = np.asarray(nib.load(first / case / f"{case}_flair.nii.gz").dataobj)
        brain = t1ce[(seg == 0) & (t1ce > 0)].mean()
        areas[classes[case]] = int((seg > 0).sum())
        labels = set(np.unique(seg).tolist())
        if classes[case] == "glioblastoma":  # necrosis in an enhancing ring, oedema round it
            assert labels == {0, 1, 2, 4} and t1ce[seg == 4].mean() > 1.5 * brain
        elif classes[case] == "low_grade_glioma":  # no enhancement, bright on FLAIR
            assert 4 not in labels and t1ce[seg > 0].mean() < brain
            assert flair[seg > 0].mean() > 1.5 * flair[(seg == 0) & (flair > 0)].mean()
        else:  # meningioma: enhancing throughout, no necrosis
            assert 1 not in labels and 4 in labels and t1ce[seg == 4].mean() > 1.5 * brain
    assert set(areas) == set(CLASSES)  # seed 7 puts each class among the segmented cases
    assert areas["glioblastoma"] > 2 * max(areas["low_grade_glioma"], areas["meningioma"])
    assert not np.asarray(nib.load(first / "BraTS_005" / "BraTS_005_seg.nii.gz").dataobj).any()
