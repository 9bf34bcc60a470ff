"""Readers: open a dataset by reference and read rows back as (key, payload, image bytes)."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import logging
import math
import stat
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import datasets

from pipeline.errors import MedindexError, first_line
from pipeline.images import ImageError
from pipeline.schemas import SourceRef

log = logging.getLogger(__name__)
# Progress bars per shard would drown the workers' logs and the CLI's own progress bar.
datasets.disable_progress_bars()

KEY_COLUMN = "image_id"
VERSION_TTL_S = 5.0  # how often a worker looks whether a local dataset's files changed


class SourceError(MedindexError):
    """A dataset that cannot be used; the message is meant for the user, on one line."""


@dataclass(frozen=True)
class SourceRow:
    row: int
    key: str
    payload: dict
    image: bytes | None
    refusal: str | None = None  # why the image could not even be read (the row fails alone)


def resolve(dataset: str, split: str = "train", name: str | None = None) -> SourceRef:
    """Turn a user's `--dataset` argument into a reference every worker can open."""
    path = Path(dataset).expanduser()
    if path.exists():
        dataset = str(path.resolve())
    elif dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise SourceError(f"dataset folder {dataset!r} does not exist")
    # Messages carry the name only where it differs: they stay small.
    return SourceRef(dataset=dataset, split=split, name=name if name != dataset else None)


class DatasetSource:
    """A Hugging Face dataset (hub id or local folder) with one image column."""

    def __init__(self, ref: SourceRef) -> None:
        self.ref = ref
        table = _load(ref)
        self.image_column = _image_column(table, ref)
        self.key_column = KEY_COLUMN if KEY_COLUMN in table.column_names else None
        # Other image columns (masks, thumbnails) are pixels, not metadata: never in a payload.
        extra = [n for n, f in table.features.items() if _is_image(f) and n != self.image_column]
        # Undecoded: each image is decoded (or refused) on its own, so one bad file fails alone.
        self.table = table.remove_columns(extra).cast_column(
            self.image_column, datasets.Image(decode=False)
        )
        self.keys = _key_census(self.table[self.key_column] if self.key_column else [])

    def __len__(self) -> int:
        return self.table.num_rows

    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        """The rows' keys, payloads and image bytes; a file over `max_image_bytes` is refused
        before it is read. A passing read error (I/O, network file system) is raised."""
        columns = self.table[rows]
        out = []
        for i, row in enumerate(rows):
            record = {name: values[i] for name, values in columns.items()}
            image = record.pop(self.image_column)
            key = self.keys.key(record[self.key_column] if self.key_column else None, row)
            payload = self._payload(record, row)
            try:
                out.append(SourceRow(row, key, payload, _image_bytes(image, max_image_bytes)))
            except ImageError as exc:
                out.append(SourceRow(row, key, payload, None, refusal=str(exc)))
        return out

    def _payload(self, record: dict, row: int) -> dict:
        # Missing stays missing: no age 0 for an unknown age, so range filters cannot match it.
        payload = {name: _plain(value) for name, value in record.items() if not _is_missing(value)}
        payload["source"] = {"dataset": self.ref.dataset, "split": self.ref.split, "row": row}
        return payload


@dataclass(frozen=True)
class KeyCensus:
    """Which keys cannot name one image alone: missing ones and those several rows share."""

    missing: int
    duplicated: dict[str, int]  # key -> how many rows carry it
    fingerprint: str  # of every key in row order: a resumed job checks its rows are the same

    def key(self, value: object, row: int) -> str:
        """An image's key, unique in its split: the row stands in for a missing key (never
        "None" or "nan"), and is added to a key that other rows share."""
        if _is_missing(value):
            return f"row-{row}"
        key = str(value)
        return f"{key}@row-{row}" if key in self.duplicated else key

    def describe(self, column: str) -> str | None:
        """One line for the user, or None when every key is present and unique."""
        parts = []
        if self.missing:
            parts.append(f"{self.missing} rows have no {column} (keyed by their row)")
        if self.duplicated:
            rows = sum(self.duplicated.values())
            shown = ", ".join(list(self.duplicated)[:5]) + (
                ", ..." if len(self.duplicated) > 5 else ""
            )
            parts.append(
                f"{rows} rows share {len(self.duplicated)} {column} values ({shown}): "
                "each keyed by its value and row"
            )
        return "; ".join(parts) or None


def _key_census(values: list) -> KeyCensus:
    keys = [None if _is_missing(v) else str(v) for v in values]
    counts = Counter(key for key in keys if key is not None)
    digest = hashlib.sha256(f"{len(keys)}".encode())
    for key in keys:
        digest.update(b"\x00" if key is None else b"\x01" + key.encode())
    duplicated = {key: n for key, n in counts.items() if n > 1}
    return KeyCensus(keys.count(None), duplicated, digest.hexdigest()[:16])


def open_source(ref: SourceRef) -> DatasetSource:
    """One open dataset per worker process and source, reused by every job, and opened anew
    when its local files change (fixed images sent again by `medindex retry`)."""
    return _open_source(ref, _local_version(ref.dataset, int(time.monotonic() // VERSION_TTL_S)))


@lru_cache(maxsize=8)
def _open_source(ref: SourceRef, version: tuple) -> DatasetSource:
    return DatasetSource(ref)


@lru_cache(maxsize=64)
def _local_version(dataset: str, _period: int) -> tuple:
    """Sizes and times of a local dataset's files, looked at once per period; () for hub ids
    (a hub dataset changes by revision)."""
    folder = Path(dataset)
    if not folder.is_dir():
        return ()
    return tuple(
        sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    )


def _load(ref: SourceRef) -> datasets.Dataset:
    try:
        return datasets.load_dataset(ref.dataset, split=ref.split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise SourceError(f"dataset {ref.dataset!r} has no split {ref.split!r}") from exc
        raise SourceError(f"cannot load dataset {ref.dataset!r}: {first_line(exc)}") from exc
    except Exception as exc:  # datasets raises many kinds: offline, missing repo, bad files
        raise SourceError(f"cannot load dataset {ref.dataset!r}: {first_line(exc)}") from exc


def _image_column(table: datasets.Dataset, ref: SourceRef) -> str:
    for name, feature in table.features.items():
        if _is_image(feature):
            return name
    raise SourceError(
        f"dataset {ref.dataset!r} has no image column (columns: {', '.join(table.column_names)})"
    )


def _image_bytes(image: dict | None, max_bytes: int) -> bytes | None:
    if not image:
        return None
    if image.get("bytes"):
        return image["bytes"]  # already in memory: decode_rgb checks its size
    if image.get("path"):
        return _read_file(Path(image["path"]), max_bytes)
    return None


def _read_file(path: Path, max_bytes: int) -> bytes:
    """Look before reading: a multi-GB file or a link to /dev/zero would take the worker's
    memory, and its job would come back to the next worker forever."""
    try:
        info = path.stat()  # follows links: what would be read
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"image file {path} is not a regular file")
    if info.st_size > max_bytes:
        raise ImageError(f"image file is {info.st_size} bytes (limit {max_bytes})")
    try:
        with path.open("rb") as file:
            return file.read(max_bytes + 1)  # a file grown since stat() stays bounded
    except PermissionError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror}") from exc


def _is_image(feature: object) -> bool:
    return isinstance(feature, datasets.Image)


def _plain(value: object) -> object:
    """A payload value as msgpack and Qdrant's JSON carry it: dates and times as ISO strings,
    decimals as floats, inside lists and structs too."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
