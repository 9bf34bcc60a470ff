"""The page's Collections view: per collection (and version), what made its vectors and how
its images are read: dimension, distance, payload indexes, points, label field, model (and
whether its weights are random), dataset and read options. Rows come from
`pipeline.catalog.collection_rows`, as `medindex collections` shows them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from pipeline.catalog import CollectionRow, collection_rows
from pipeline.model_info import random_weights
from pipeline.store import Reader

SHORT_PATH = 28  # characters: a longer path shows its last two parts (the whole on hover)


@dataclass(frozen=True)
class CollectionFacts:
    row: CollectionRow
    distance: str
    indexes: tuple[str, ...]  # the payload fields the engine indexes
    label_field: str | None
    reading: str  # its images' format and read options (`dicom: dicom_window=lung`)
    random_model: bool  # vectors from randomly initialised weights: neighbours mean nothing


def collection_facts(store: Reader) -> list[CollectionFacts]:
    return [_facts(store, row) for row in collection_rows(store)]


def _facts(store: Reader, row: CollectionRow) -> CollectionFacts:
    info = store.collection_info(row.collection)
    schema = info["metadata"].get("schema") or {}
    first = store.scroll(row.collection, limit=1)["points"]
    return CollectionFacts(
        row=row,
        distance=str(info.get("distance", "")).lower(),
        indexes=tuple(sorted(info.get("payload_indexes", {}))),
        label_field=schema.get("label_field"),
        reading=_reading(first[0]["payload"].get("source") if first else None),
        random_model=random_weights(row.model),
    )


def _reading(source: object) -> str:
    """How a point's picture is read, from its `source` reference (Source.reference)."""
    if not isinstance(source, dict):
        return ""
    options = source.get("options") or {}
    # A path option (a labels table) by its end, like the dataset column: it must not widen it.
    told = ", ".join(
        f"{name}={short_path(value) if isinstance(value, str) else value}"
        for name, value in sorted(options.items())
    )
    return f"{source.get('format', 'hf')}: {told}" if told else source.get("format", "hf")


def short_path(value: str | None) -> str:
    """A long path by its last parts (`…/data/xray`; `…/vit-tiny` where two are still long),
    for a column that stays narrow: the distinguishing part is the end."""
    if not value or len(value) <= SHORT_PATH:
        return value or ""
    parts = PurePath(value).parts
    for last in (2, 1):
        shortened = "…/" + "/".join(parts[-last:])
        if len(parts) > last and len(shortened) <= SHORT_PATH:
            return shortened
    return "…/" + parts[-1]
