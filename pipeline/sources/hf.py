"""The `hf` reader: a Hugging Face dataset (hub id or local folder) with an image column."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import datasets
from datasets.packaged_modules import _EXTENSION_TO_MODULE  # datasets' own suffix -> loader

from pipeline.errors import first_line
from pipeline.images import ImageError
from pipeline.schemas import SourceRef
from pipeline.sources.base import (
    Field,
    FieldType,
    Schema,
    Source,
    SourceError,
    SourceRow,
    is_identifier,
    is_missing,
    key_census,
    plain,
    read_file,
)

log = logging.getLogger(__name__)
# Progress bars per shard would drown the workers' logs and the CLI's own progress bar.
datasets.disable_progress_bars()

# Column names that say "I name something" (`image_id`, `Image Index`, `file_name`,
# `filepath`): preferred as the key column.
KEY_NAME = re.compile(r"(^|_)(id|index|key)$|(name|path)$")


class DatasetSource(Source):
    """A Hugging Face dataset (hub id or local folder) with one image column."""

    format = "hf"

    def __init__(self, ref: SourceRef) -> None:
        super().__init__(ref)
        table = _load(ref)
        self.image_column = _image_column(table, ref)
        # Other image columns (masks, thumbnails) are pixels, not metadata: never in a payload.
        extra = [n for n, f in table.features.items() if _is_image(f) and n != self.image_column]
        # Undecoded: each image is decoded (or refused) on its own, so one bad file fails alone.
        self.table = table.remove_columns(extra).cast_column(
            self.image_column, datasets.Image(decode=False)
        )
        self.key_column = _key_column(self.table, ref, self.image_column)
        self._class_names = {
            name: feature.names
            for name, feature in self.table.features.items()
            if isinstance(feature, datasets.ClassLabel)
        }
        self._identifiers = {
            name
            for name, feature in self.table.features.items()
            if isinstance(feature, datasets.Value)
            and field_type(feature) == "integer"
            and is_identifier(name)
        }
        # Each row's key value, in row order (a worker reads any rows by index).
        self._key_values = (
            list(self.table[self.key_column]) if self.key_column else self._image_keys()
        )
        self.keys = key_census(self._key_values)

    @classmethod
    def detect(cls, path: Path) -> bool:
        """The fallback: a folder holding any file `datasets` has a loader for (Parquet, CSV,
        JSON, Arrow, images, ...)."""
        if not path.is_dir():
            return False
        files = (p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return any(p.suffix in _EXTENSION_TO_MODULE for p in files)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def schema(self) -> Schema:
        fields = tuple(
            Field(name, "keyword" if name in self._identifiers else kind)
            for name, feature in self.table.features.items()
            if name != self.image_column and (kind := field_type(feature))
        )
        return Schema(
            fields, key_field=self.key_column, label_field=next(iter(self._class_names), None)
        )

    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        """The rows' keys, payloads and image bytes; a file over `max_image_bytes` is refused
        before it is read. A passing read error (I/O, network file system) is raised."""
        columns = self.table[rows]
        out = []
        for i, row in enumerate(rows):
            record = {name: values[i] for name, values in columns.items()}
            image = record.pop(self.image_column)
            key = self.keys.key(self._key_values[row], row)
            payload = self._payload(record, row, key)
            try:
                out.append(SourceRow(row, key, payload, _image_bytes(image, max_image_bytes)))
            except ImageError as exc:
                out.append(SourceRow(row, key, payload, None, refusal=str(exc)))
        return out

    def _payload(self, record: dict, row: int, key: str) -> dict:
        # Missing stays missing: no age 0 for an unknown age, so range filters cannot match it.
        values = {name: self._value(name, value) for name, value in record.items()}
        payload = {name: value for name, value in values.items() if not is_missing(value)}
        payload["source"] = self.reference(row, key)
        return payload

    def _value(self, name: str, value: object) -> object:
        """Class labels as their names (what a filter or a reader of the payload expects); -1,
        `datasets`' "no label", is missing; a numeric identifier as text."""
        if name in self._identifiers and value is not None:
            return str(value)
        names = self._class_names.get(name)
        if names is None:
            return plain(value)
        return names[value] if value is not None and 0 <= value < len(names) else None

    def _image_keys(self) -> list[str | None]:
        """Without a key column: the image file's path inside a local dataset folder, else
        (a hub dataset) a hash of the image's bytes. Either stays when rows are re-sorted."""
        root = Path(self.ref.dataset)
        keys = []
        for image in self.table[self.image_column]:
            path = Path(image["path"]) if image and image.get("path") else None
            if path is not None and root.is_dir() and path.is_relative_to(root):
                keys.append(str(path.relative_to(root)))
                continue
            try:
                data = _image_bytes(image, max_bytes=1 << 40)  # hashed, never held all at once
            except ImageError:
                data = None
            keys.append(hashlib.sha256(data).hexdigest()[:32] if data else None)
        return keys


def field_type(feature: object) -> FieldType | None:
    """The payload index a column deserves; None: not indexed (structs, binary, images)."""
    if isinstance(feature, datasets.ClassLabel):
        return "keyword"
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        inner = field_type(feature.feature)
        return inner if isinstance(feature.feature, datasets.Value) else None
    if not isinstance(feature, datasets.Value):
        return None
    dtype = feature.dtype
    if dtype in ("string", "large_string"):
        return "keyword"
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("int", "uint")):
        return "integer"
    if dtype.startswith(("float", "double", "decimal")):
        return "float"
    if dtype.startswith(("timestamp", "date")):
        return "datetime"
    return None


def _key_column(table: datasets.Dataset, ref: SourceRef, image_column: str) -> str | None:
    """`--key-column`, else a detected one: among string columns named like a key (`KEY_NAME`),
    the one with the most distinct values; without such a name, the first string column whose
    values are all present and unique."""
    columns = table.column_names
    if ref.options.key_column:
        if ref.options.key_column not in columns:
            raise SourceError(
                f"dataset {ref.dataset!r} has no key column {ref.options.key_column!r} "
                f"(columns: {', '.join(columns)})"
            )
        return ref.options.key_column
    strings = [
        name
        for name, feature in table.features.items()
        if name != image_column
        and field_type(feature) == "keyword"
        and isinstance(feature, datasets.Value)
    ]
    named = [n for n in strings if KEY_NAME.search(re.sub(r"\W+", "_", n.lower()))]
    if named:
        return max(named, key=lambda n: (len(set(table[n])), -named.index(n)))
    for name in strings:
        values = table[name]
        if not any(is_missing(v) for v in values) and len(set(values)) == len(values):
            return name
    return None


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
    wanted = ref.options.image_column
    for name, feature in table.features.items():
        if _is_image(feature) and wanted in (None, name):
            return name
    what = f"image column {wanted!r}" if wanted else "image column"
    raise SourceError(
        f"dataset {ref.dataset!r} has no {what} (columns: {', '.join(table.column_names)})"
    )


def _image_bytes(image: dict | None, max_bytes: int) -> bytes | None:
    if not image:
        return None
    if image.get("bytes"):
        return image["bytes"]  # already in memory: decode_rgb checks its size
    if image.get("path"):
        return read_file(Path(image["path"]), max_bytes)
    return None


def _is_image(feature: object) -> bool:
    return isinstance(feature, datasets.Image)
