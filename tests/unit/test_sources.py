"""Reading a dataset by reference: the payload keeps what is known and nothing more."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import datasets
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from support import TYPED, png, write_table, write_typed

from pipeline.schemas import ReadOptions
from pipeline.sources import (
    SourceError,
    detect_format,
    open_source,
    resolve,
    source_class,
    upload_format,
    versioned,
)
from pipeline.sources import nifti as nifti_reader
from pipeline.sources.hf import DatasetSource

COLUMNS = ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization"]


def test_rows_come_back_with_their_payload_and_a_reference(dataset: Path) -> None:
    source = DatasetSource(resolve(str(dataset)))
    table = datasets.load_dataset(str(dataset), split="train")
    missing = [i for i, age in enumerate(table["age"]) if age is None or math.isnan(age)]
    assert missing, "the sample data must have missing ages"
    rows = [0, 5, missing[0]]
    for record in source.read(rows, 32 * 1024 * 1024):
        expected = table[record.row]
        assert record.key == expected["image_id"]
        assert record.image[:2] == b"\xff\xd8"  # the JPEG bytes, undecoded
        for column in COLUMNS:
            if column == "age" and record.row in missing:
                assert "age" not in record.payload  # missing stays missing, never 0
            else:
                assert record.payload[column] == expected[column]
        assert record.payload["source"] == {
            "dataset": str(dataset.resolve()),
            "split": "train",
            "row": record.row,
            "key": record.key,
        }


def test_a_folder_that_does_not_exist_is_named() -> None:
    with pytest.raises(SourceError, match="does not exist"):
        resolve("./no/such/folder")


def test_a_dataset_without_images_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "no-images"
    (folder / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict({"image_id": ["a"], "dx": ["melanoma"]})
    table.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(SourceError, match="has no image column"):
        DatasetSource(resolve(str(folder)))


def test_a_missing_split_is_named(dataset: Path) -> None:
    with pytest.raises(SourceError, match="no split 'test'"):
        DatasetSource(resolve(str(dataset), split="test"))


def test_the_schema_comes_from_the_features(tmp_path: Path) -> None:
    source = DatasetSource(resolve(str(write_typed(tmp_path / "typed", list(range(6))))))
    assert source.schema.to_dict() == {
        "fields": {
            "note": "keyword",
            "scan_name": "keyword",
            "grade": "integer",
            "score": "float",
            "taken": "datetime",
            "urgent": "bool",
            "findings": "keyword",
            "kind": "keyword",
        },
        "key_field": "scan_name",  # named like a key; `note` repeats itself
        "label_field": "kind",  # the class label column
    }
    (record,) = source.read([3], 1 << 20)
    assert record.key == "scan-3"
    assert record.payload["kind"] == "malignant"  # a class label as its name
    assert record.payload["findings"] == ["mass", "nodule"][:0]
    assert record.payload["taken"] == "2024-01-04T00:00:00"


def test_a_numeric_identifier_is_a_keyword(tmp_path: Path) -> None:
    """`patient_id` 30805 is matched, never ranged: a keyword, its value text."""
    rows = {"image": [png(i) for i in range(3)], "patient_id": [30805, 30805, 17],
            "follow_up": [0, 1, 0]}  # fmt: skip
    features = {"image": datasets.Image(), "patient_id": datasets.Value("int64"),
                "follow_up": datasets.Value("int32")}  # fmt: skip
    folder = write_table(tmp_path / "ids", rows, features)
    source = DatasetSource(resolve(str(folder)))
    assert source.schema.indexes() == {"patient_id": "keyword", "follow_up": "integer"}
    assert [r.payload["patient_id"] for r in source.read([0, 2], 1 << 20)] == ["30805", "17"]


def test_a_job_sent_after_its_files_change_reads_the_change_at_once(tmp_path: Path) -> None:
    """`medindex retry` right after fixing files: a worker that opened the dataset moments
    before must not serve the old rows from its cache (the chaos run's lost retries)."""
    folder = write_typed(tmp_path / "fixed", list(range(6)))
    before = versioned(resolve(str(folder)))
    (old,) = open_source(before).read([3], 1 << 20)
    write_typed(folder, [5, 4, 3, 2, 1, 0])  # the same folder rewritten, within a second
    after = versioned(before)
    assert after.version != before.version
    (new,) = open_source(after).read([3], 1 << 20)
    assert (old.key, new.key) == ("scan-3", "scan-2")


def test_without_a_key_column_an_image_is_keyed_by_its_bytes(tmp_path: Path) -> None:
    """A hub-like dataset with no column naming its images: keys are hashes of the images,
    so re-sorting the rows keeps each image's key."""

    def keys(folder: Path, order: list[int]) -> dict[int, str]:
        rows = {"image": [png(i) for i in order], "kind": [i % 2 for i in order]}
        features = datasets.Features({"image": datasets.Image(), "kind": TYPED["kind"]})
        (folder / "data").mkdir(parents=True)
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
        source = DatasetSource(resolve(str(folder)))
        assert source.schema.key_field is None
        return {i: r.key for i, r in zip(order, source.read(list(range(6)), 1 << 20), strict=True)}

    first, resorted = (
        keys(tmp_path / "a", [0, 1, 2, 3, 4, 5]),
        keys(tmp_path / "b", [5, 3, 1, 0, 2, 4]),
    )
    assert first == resorted
    assert first[2] == hashlib.sha256(png(2)["bytes"]).hexdigest()[:32]


def test_a_key_column_given_is_used_or_refused(tmp_path: Path) -> None:
    folder = write_typed(tmp_path / "typed", list(range(6)))
    chosen = DatasetSource(resolve(str(folder), options=ReadOptions(key_column="note")))
    assert chosen.schema.key_field == "note"
    assert (
        chosen.keys.describe("note")
        == "6 rows share 1 note values (same): each keyed by its value and row"
    )
    with pytest.raises(SourceError, match="no key column 'nope'"):
        DatasetSource(resolve(str(folder), options=ReadOptions(key_column="nope")))


def test_a_folder_no_reader_recognises_is_named(tmp_path: Path) -> None:
    assert detect_format(str(write_typed(tmp_path / "typed", [0]))) == "hf"
    assert detect_format("someone/some_dataset") == "hf"  # not a local path: a hub id
    (tmp_path / "empty").mkdir()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "scan.bin").write_bytes(b"\x00" * 64)
    for folder in ("empty", "blobs"):
        with pytest.raises(SourceError, match="no reader recognises it"):
            detect_format(str(tmp_path / folder))


def test_an_uploaded_file_is_read_by_the_reader_that_knows_it() -> None:
    """The search API asks the registry whose an uploaded query file is (`sniff`), then that
    reader for its picture (`query_picture`); an ordinary image is no reader's."""
    volume = np.arange(8 * 8 * 3, dtype=np.int16).reshape(8, 8, 3)
    nifti = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert upload_format(bytes(128) + b"DICM" + bytes(64)) == "dicom"
    assert upload_format(nifti) == "nifti"
    assert upload_format(png.getvalue()) is None
    picture = source_class("nifti").query_picture(nifti, ReadOptions())
    assert picture.tobytes() == nifti_reader.query_picture(nifti, ReadOptions()).tobytes()
