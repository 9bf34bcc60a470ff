"""The `hf` reader: a Hugging Face dataset (hub id or local folder) with an image column."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from pipeline.errors import first_line
from pipeline.images import ImageError
from pipeline.schemas import SourceRef
from pipeline.sources.base import (
    KeyCensus,
    Schema,
    Source,
    SourceError,
    SourceRow,
    is_missing,
    key_census,
    plain,
    read_file,
)

log = logging.getLogger(__name__)
# Progress bars per shard would drown the workers' logs and the CLI's own progress bar.
datasets.disable_progress_bars()

KEY_COLUMN = "image_id"


class DatasetSource(Source):
    """A Hugging Face dataset (hub id or local folder) with one image column."""

    format = "hf"

    def __init__(self, ref: SourceRef) -> None:
        super().__init__(ref)
        table = _load(ref)
        self.image_column = _image_column(table, ref)
        self.key_column = KEY_COLUMN if KEY_COLUMN in table.column_names else None
        # Other image columns (masks, thumbnails) are pixels, not metadata: never in a payload.
        extra = [n for n, f in table.features.items() if _is_image(f) and n != self.image_column]
        # Undecoded: each image is decoded (or refused) on its own, so one bad file fails alone.
        self.table = table.remove_columns(extra).cast_column(
            self.image_column, datasets.Image(decode=False)
        )
        self._keys = key_census(self.table[self.key_column] if self.key_column else [])

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir()  # the fallback: `datasets` reads most folders of data files

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def keys(self) -> KeyCensus:
        return self._keys

    @property
    def schema(self) -> Schema:
        return Schema(fields=(), key_field=self.key_column)

    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        """The rows' keys, payloads and image bytes; a file over `max_image_bytes` is refused
        before it is read. A passing read error (I/O, network file system) is raised."""
        columns = self.table[rows]
        out = []
        for i, row in enumerate(rows):
            record = {name: values[i] for name, values in columns.items()}
            image = record.pop(self.image_column)
            key = self.keys.key(record[self.key_column] if self.key_column else None, row)
            payload = self._payload(record, row, key)
            try:
                out.append(SourceRow(row, key, payload, _image_bytes(image, max_image_bytes)))
            except ImageError as exc:
                out.append(SourceRow(row, key, payload, None, refusal=str(exc)))
        return out

    def _payload(self, record: dict, row: int, key: str) -> dict:
        # Missing stays missing: no age 0 for an unknown age, so range filters cannot match it.
        payload = {name: plain(value) for name, value in record.items() if not is_missing(value)}
        payload["source"] = self.reference(row, key)
        return payload


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
        return read_file(Path(image["path"]), max_bytes)
    return None


def _is_image(feature: object) -> bool:
    return isinstance(feature, datasets.Image)
