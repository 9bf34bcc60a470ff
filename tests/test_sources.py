"""Reading a dataset by reference: the payload keeps what is known and nothing more."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import pytest

from pipeline.sources import DatasetSource, SourceError, resolve

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
