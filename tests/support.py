"""What tests of every tier share: where artifacts go, free ports, the one-line-error check, and
a small dataset of every column type."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import datasets
from PIL import Image

from producers.harness import Result
from producers.harness import free_port as free_port  # the tiers' free ports

ROOT = Path(__file__).resolve().parent.parent  # the repository
ARTIFACTS = ROOT / "test-artifacts"
N_IMAGES = 1100  # more than one full write of 1,000 points


def assert_one_line_error(result: Result, *words: str) -> None:
    """A user's mistake: a non-zero exit, one line saying so (with `words`), no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def png(value: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (value, 255 - value, (7 * value) % 256)).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


TYPED = datasets.Features(
    {
        "image": datasets.Image(),
        "note": datasets.Value("string"),  # repeated: no key
        "scan_name": datasets.Value("string"),  # named like a key, unique
        "grade": datasets.Value("int32"),
        "score": datasets.Value("float64"),
        "taken": datasets.Value("timestamp[s]"),
        "urgent": datasets.Value("bool"),
        "findings": datasets.Sequence(datasets.Value("string")),
        "kind": datasets.ClassLabel(names=["benign", "malignant"]),
        "extra": {"a": datasets.Value("int32")},  # a struct: carried, not indexed
    }
)


def write_typed(folder: Path, order: list[int]) -> Path:
    """Six rows of every column type, in `order` (a re-sorted copy keeps its keys)."""
    rows = {
        "image": [png(i) for i in order],
        "note": ["same" for _ in order],
        "scan_name": [f"scan-{i}" for i in order],
        "grade": [i for i in order],
        "score": [i / 2 for i in order],
        "taken": [datetime.datetime(2024, 1, 1 + i) for i in order],
        "urgent": [i % 2 == 0 for i in order],
        "findings": [["mass", "nodule"][: i % 3] for i in order],
        "kind": [i % 2 for i in order],
        "extra": [{"a": i} for i in order],
    }
    (folder / "data").mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict(rows, features=TYPED)
    table.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


def write_table(folder: Path, columns: dict, features: dict) -> Path:
    """A local dataset in the layout `load_dataset(folder, split="train")` reads."""
    (folder / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    table.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder
