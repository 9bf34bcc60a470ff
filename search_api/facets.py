"""What the page filters on: a collection's fields (its schema, or one guessed from its
payloads), with the counts of each keyword value and each number's range.

Counted from a bounded scroll (the first `FACET_SAMPLE` points in id order, a fair sample: ids
are hashes), not the store's facet API: the store interface has none yet (Qdrant Edge's
`EdgeShard.facet` and the server's `facet` would give exact counts on indexed fields).
Exact when the collection is no bigger than the sample; the page says which.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from pipeline.catalog import first_points, recorded_or_guessed_schema
from pipeline.sources.base import Schema
from search_api.deps import client

FACET_SAMPLE = 10_000
TOP_VALUES = 50  # a keyword field's values offered in its multi-select, the most common first
GROUP_MAX_VALUES = 100  # a field with more values is no grouping for the per-label view
# The field naming the patient: `patient` (DICOM's keyed hash), `patient_id` (a table's column);
# not patient_age or patient_sex.
PATIENT = re.compile(r"patient[ _-]?(id)?", re.IGNORECASE)


@dataclass(frozen=True)
class FieldView:
    name: str
    type: str  # keyword | integer | float | datetime | bool
    values: tuple[tuple[str, int], ...] = ()  # keyword: (value, count), most common first
    distinct: int = 0  # keyword: distinct values in the sample
    low: float | None = None  # numbers: the sample's range
    high: float | None = None


@dataclass(frozen=True)
class CollectionView:
    version: str  # the collection itself (an alias resolved)
    points: int
    sampled: int  # payloads the counts come from
    schema: Schema
    fields: tuple[FieldView, ...]
    groupings: tuple[str, ...]  # keyword fields the per-label view may group by
    group_field: str | None  # its default: the label field
    patient_field: str | None

    @property
    def exact(self) -> bool:
        return self.sampled >= self.points

    def keyword_fields(self) -> list[FieldView]:
        return _multi_selects(self.fields, self.schema, self.sampled)


def version_of(collection: str) -> str:
    """The collection an alias points at (a collection names itself)."""
    return client().store.aliases().get(collection, collection)


def collection_view(collection: str) -> CollectionView:
    version = version_of(collection)
    points = client().store.collection_info(version)["points"]
    return _view(version, points)


@lru_cache(maxsize=32)
def _view(version: str, points: int) -> CollectionView:
    """Per version and point count: a version being filled is counted again as it grows."""
    payloads = [hit["payload"] for hit in first_points(client().store, version, FACET_SAMPLE)]
    schema = recorded_or_guessed_schema(client().store.metadata(version), payloads)
    fields = tuple(_field_view(f.name, f.type, payloads) for f in schema.fields)
    groupings = [
        f.name
        for f in _multi_selects(fields, schema, len(payloads))
        if f.distinct <= GROUP_MAX_VALUES
    ]
    label = schema.label_field
    group = label if label in groupings else next(iter(groupings), None)
    patient = next((f.name for f in schema.fields if PATIENT.fullmatch(f.name)), None)
    return CollectionView(
        version, points, len(payloads), schema, fields, tuple(groupings), group, patient
    )


def _multi_selects(fields: tuple[FieldView, ...], schema: Schema, sampled: int) -> list[FieldView]:
    """The keyword fields a multi-select helps with: not one value per point (the key)."""
    return [
        f
        for f in fields
        if f.type == "keyword" and f.name != schema.key_field and 1 < f.distinct < sampled
    ]


def _each(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _field_view(name: str, kind: str, payloads: list[dict]) -> FieldView:
    values = [p[name] for p in payloads if p.get(name) is not None]
    if kind == "keyword":  # a list (several findings) counts once for each of its values
        counts = Counter(str(v) for value in values for v in _each(value))
        return FieldView(name, kind, tuple(counts.most_common(TOP_VALUES)), len(counts))
    if kind in ("integer", "float"):
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        low, high = (min(numbers), max(numbers)) if numbers else (None, None)
        return FieldView(name, kind, low=low, high=high)
    return FieldView(name, kind)
