"""What tests of every tier share: where artifacts go, free ports, the one-line-error check, the
skin sample written once, and a small dataset of every column type."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import shutil
import tempfile
from functools import cache
from importlib.metadata import version
from pathlib import Path

import datasets
from PIL import Image

from pipeline.samples import skin
from producers.harness import Result
from producers.harness import free_port as free_port  # the tiers' free ports

ROOT = Path(__file__).resolve().parent.parent  # the repository
ARTIFACTS = ROOT / "test-artifacts"
N_IMAGES = 1100  # more than one full write of 1,000 points
SAMPLES = Path(tempfile.gettempdir()) / "medindex-test-samples"  # rendered skin samples, kept


def assert_one_line_error(result: Result, *words: str) -> None:
    """A user's mistake: a non-zero exit, one line saying so (with `words`), no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def sample_dataset(out_dir: Path, n: int, seed: int = 0) -> Path:
    """`write_sample_dataset(out_dir, n, seed)`, copied from the one rendered for the first test
    process that asked (rendering takes 17 ms an image: the tiers ask for 1,100 each, and the
    same small ones module after module). Kept by the generator's code and the libraries that
    encode it, so a change to either renders again."""
    rendered = SAMPLES / f"{_generator()}-{n}-{seed}"
    if not rendered.exists():
        SAMPLES.mkdir(exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=SAMPLES, prefix=".rendering-"))
        skin.write_sample_dataset(scratch, n, seed)
        with contextlib.suppress(OSError):  # another process rendered it meanwhile
            scratch.rename(rendered)
        shutil.rmtree(scratch, ignore_errors=True)
    # Plain copies: fresh modification times, as a newly written file has.
    shutil.copytree(rendered, out_dir, copy_function=shutil.copyfile, dirs_exist_ok=True)
    return out_dir


@cache
def _generator() -> str:
    digest = hashlib.sha256(Path(skin.__file__).read_bytes())
    for library in ("numpy", "pillow", "datasets", "pyarrow"):
        digest.update(version(library).encode())
    return digest.hexdigest()[:16]


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
