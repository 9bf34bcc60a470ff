"""The reader interface: every format turns a row into a key, a payload and the 2-D picture.

A `Source` is opened from a `SourceRef` (what a job carries) on any worker. Rows are numbered
0..len-1 in a stable order (sorted file listings, table order); a point's identity is its key,
never its row number, so a re-sorted table or a re-listed folder rewrites the same points.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import math
import re
import stat
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from PIL import Image

from pipeline.errors import MedindexError
from pipeline.images import ImageError
from pipeline.schemas import ReadOptions, SourceRef

if TYPE_CHECKING:
    from pipeline.sources.window import Levels  # pydicom: imported by the readers that need it

FieldType = Literal["keyword", "integer", "float", "datetime", "bool"]
# An identifier (`Patient ID`, `lesion_id`) is a keyword, numbers or not: no range of ids means
# anything, and a filter matches it exactly. Readers keep a numeric one's values as text.
_IDENTIFIER = re.compile(r"(\w+_)?id")


def is_identifier(column: str) -> bool:
    """Whether a column (as written, or as a field name) names an identifier."""
    return bool(_IDENTIFIER.fullmatch(re.sub(r"[\W_]+", "_", column.lower()).strip("_")))


class SourceError(MedindexError):
    """A dataset that cannot be used; the message is meant for the user, on one line."""


@dataclass(frozen=True)
class Field:
    """One payload field a reader writes, with the payload index type it deserves."""

    name: str
    type: FieldType


@dataclass(frozen=True)
class Schema:
    """What a source's payloads hold: recorded with the collection, the basis of its payload
    indexes, of `medindex search`'s columns and of the search page's filters.

    `key_field`: the payload field that names an image (None: the key is a path or a hash).
    `label_field`: the field quality, group-by and colouring use (None: there is none).
    """

    fields: tuple[Field, ...]
    key_field: str | None = None
    label_field: str | None = None

    def indexes(self) -> dict[str, str]:
        """field -> Qdrant payload index type."""
        return {f.name: f.type for f in self.fields}

    def to_dict(self) -> dict:
        return {
            "fields": {f.name: f.type for f in self.fields},
            "key_field": self.key_field,
            "label_field": self.label_field,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Schema:
        fields = tuple(Field(name, kind) for name, kind in data.get("fields", {}).items())
        return cls(fields, data.get("key_field"), data.get("label_field"))


@dataclass(frozen=True)
class SourceRow:
    """One row as read: `image` is encoded bytes (decoded, maybe at reduced size, by the
    embed step) or an already made 8-bit picture (a slice, a windowed DICOM frame)."""

    row: int
    key: str
    payload: dict
    image: bytes | Image.Image | None
    refusal: str | None = None  # why the picture could not be made (the row fails alone)
    # What an audit's fingerprints need from readers that make the picture themselves: the
    # file's sha256 when the picture is that file's alone, the values before any window at
    # their stored depth, and the volume a slice belongs to (adjacent slices are no duplicates).
    file_sha256: str | None = None
    pixels: np.ndarray | None = None
    volume: str | None = None


class Source(ABC):
    """A dataset of one format, opened by reference. Subclasses read, nothing else."""

    format: ClassVar[str]
    keys: KeyCensus  # every row's key, checked once when the source opens (set by each reader)

    def __init__(self, ref: SourceRef) -> None:
        self.ref = ref

    @classmethod
    @abstractmethod
    def detect(cls, path: Path) -> bool:
        """Whether a local path looks like this format (used when `--format` is absent)."""

    @staticmethod
    def sniff(data: bytes) -> bool:
        """Whether an uploaded query file is of this format: its reader then makes the file's
        picture (`query_picture`). Formats whose files are not uploaded say no."""
        return False

    @staticmethod
    def query_picture(data: bytes, options: ReadOptions) -> Image.Image:
        """An uploaded file's picture, made as ingest makes it with the read options given;
        asked only of a reader whose `sniff` said yes."""
        raise NotImplementedError

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def schema(self) -> Schema: ...

    @abstractmethod
    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        """The rows' keys, payloads and pictures. A picture that cannot be made is a row with
        a `refusal`; a passing error (I/O on a network file system) is raised."""

    def levels(self, row: int, key: str | None, max_image_bytes: int) -> Levels:
        """The row's picture before its window, for a viewer to show through another one
        (`pipeline.sources.window.render`); `key`: the image the row is known as (refused if it
        names another now). Formats of 8-bit pictures have none to give."""
        raise SourceError(f"{self.format} pictures have no grey levels to window")

    def reference(self, row: int, key: str) -> dict:
        """The `source` payload field: enough to make the same picture again."""
        ref = {"dataset": self.ref.dataset, "split": self.ref.split, "row": row, "key": key}
        if self.ref.format != "hf":
            ref["format"] = self.ref.format
        if options := self.ref.options.model_dump(exclude_defaults=True):
            ref["options"] = options
        return ref


@dataclass(frozen=True)
class KeyCensus:
    """Which keys cannot name one image alone: missing ones and those several rows share."""

    missing: int
    duplicated: dict[str, int]  # key -> how many rows carry it
    fingerprint: str  # of every key in row order: a resumed job checks its rows are the same

    def key(self, value: object, row: int) -> str:
        """An image's key, unique in its split: the row stands in for a missing key (never
        "None" or "nan"), and is added to a key that other rows share."""
        if is_missing(value):
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


def key_census(values: list) -> KeyCensus:
    keys = [None if is_missing(v) else str(v) for v in values]
    counts = Counter(key for key in keys if key is not None)
    digest = hashlib.sha256(f"{len(keys)}".encode())
    for key in keys:
        digest.update(b"\x00" if key is None else b"\x01" + key.encode())
    duplicated = {key: n for key, n in counts.items() if n > 1}
    return KeyCensus(keys.count(None), duplicated, digest.hexdigest()[:16])


def check_key(found: str, recorded: str | None, row: int) -> None:
    """A row read again by a point's `source` must still be that point's image (a folder that
    changed since its ingest may put another file at that row)."""
    if recorded is not None and found != recorded:
        raise ImageError(f"row {row} is no longer {recorded!r} (the dataset changed)")


def read_file(path: Path, max_bytes: int, name: str | None = None) -> bytes:
    """Look before reading: a multi-GB file or a link to /dev/zero would take the worker's
    memory, and its job would come back to the next worker forever. `name`: what errors call
    the file (its path by default; a reader whose paths hold patients' names gives its key)."""
    name = name or str(path)
    try:
        info = path.stat()  # follows links: what would be read
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image file {name} is not a regular file")
        if info.st_size > max_bytes:
            raise ImageError(f"image file is {info.st_size} bytes (limit {max_bytes})")
        with path.open("rb") as file:
            return file.read(max_bytes + 1)  # a file grown since stat() stays bounded
    except OSError as exc:
        raise unreadable(exc, name) from None


def unreadable(exc: OSError, name: str) -> Exception:
    """What reading file `name` raises when the system refuses: a file gone or forbidden fails
    its row (ImageError); any other error (EIO, ESTALE on network storage: worth another try)
    is raised again, `renamed`."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError | PermissionError):
        return ImageError(f"cannot read image file {name}: {exc.strerror}")
    return renamed(exc, name)


def renamed(exc: OSError, name: str) -> OSError:
    """The same error (its class and errno) naming the file `name`, never the path it held."""
    if exc.errno is None:
        return type(exc)(f"cannot read file {name}")
    return type(exc)(exc.errno, exc.strerror, name)


def inside(root: Path, relative: str, name: str | None = None) -> Path:
    """`root / relative`, refused when it would leave `root` (`..`, an absolute path, a link
    out): a dataset names files in its own folder, never arbitrary files on the worker.
    `name`: what errors call the file (`relative` by default)."""
    try:
        path = (root / relative).resolve()
    except RuntimeError:  # a loop of symbolic links (its message holds the path)
        raise ImageError(f"path {name or repr(relative)} is a loop of symbolic links") from None
    except OSError as exc:
        raise unreadable(exc, name or relative) from None
    if not path.is_relative_to(root.resolve()):
        raise ImageError(f"path {name or repr(relative)} is outside the dataset folder")
    return path


def plain(value: object) -> object:
    """A payload value as msgpack and Qdrant's JSON carry it: dates and times as ISO strings,
    decimals as floats, inside lists and structs too."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
