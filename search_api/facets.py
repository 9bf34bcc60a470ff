"""What the page filters on: a collection's fields (its schema, or one guessed from its
payloads), with the counts of each keyword value (all of them, for type-ahead) and each
number's range and histogram; for DICOM, its patients, studies and series.

A payload-indexed field is counted by the store over the whole collection (its facet API for a
keyword's values, its count for each bin of a number's histogram, between the lowest and
highest value it holds): exact at any size. The other fields (a schema guessed from payloads,
a field added without an index) and DICOM's patient tree come from a bounded scroll (the first
`FACET_SAMPLE` points in id order, a fair sample: ids are hashes), exact when the collection is
no bigger than the sample; the page says which.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import pairwise

from pipeline.catalog import first_points, recorded_or_guessed_schema
from pipeline.sources.base import Schema
from search_api.deps import client

FACET_SAMPLE = 10_000
FACET_VALUES = 10_000  # a keyword field's values counted by the store, the most common first
TOP_VALUES = 50  # a keyword field's values offered in its multi-select, the most common first
TYPE_AHEAD_FROM = 25  # a keyword field with this many values also gets a type-ahead over them
HISTOGRAM_BINS = 16
GROUP_MAX_VALUES = 100  # a field with more values is no grouping for the per-label view
# The field naming the patient: `patient` (DICOM's keyed hash), `patient_id` (a table's column);
# not patient_age or patient_sex.
PATIENT = re.compile(r"patient[ _-]?(id)?", re.IGNORECASE)
# DICOM's identities (pipeline/sources/dicom.py IDENTITY_TAGS): its patient -> study -> series.
STUDY, SERIES = "study", "series"


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class FieldView:
    name: str
    type: str  # keyword | integer | float | datetime | bool
    counts: tuple[tuple[str, int], ...] = ()  # keyword: (value, count), most common first
    low: float | None = None  # numbers: the sample's range
    high: float | None = None
    histogram: tuple[Bin, ...] = ()  # numbers: counts in equal bins from low to high
    lists: bool = False  # its values are lists (a volume's shape): matched, never ranged
    exact: bool = False  # counted by the store over the whole collection

    @property
    def values(self) -> tuple[tuple[str, int], ...]:
        """What its multi-select offers: the most common values."""
        return self.counts[:TOP_VALUES]

    @property
    def distinct(self) -> int:
        return len(self.counts)

    @property
    def type_ahead(self) -> bool:
        return self.distinct >= TYPE_AHEAD_FROM

    def matching(self, text: str, limit: int) -> list[tuple[str, int]]:
        """Values holding `text` (any case), those starting with it first, then by count."""
        text = text.casefold()
        found = [(v, n) for v, n in self.counts if text in v.casefold()]
        return sorted(found, key=lambda vn: not vn[0].casefold().startswith(text))[:limit]


@dataclass(frozen=True)
class Series:
    id: str  # the keyed hash, as the payload holds it
    images: int
    description: str | None
    modality: str | None


@dataclass(frozen=True)
class Study:
    id: str
    date: str | None
    series: tuple[Series, ...]


@dataclass(frozen=True)
class Patient:
    id: str
    studies: tuple[Study, ...]


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
    patients: tuple[Patient, ...]  # DICOM's patient -> study -> series (empty: no series)

    @property
    def exact(self) -> bool:
        counted = (f for f in self.fields if f.type in ("keyword", "integer", "float"))
        return self.sampled >= self.points or all(f.exact for f in counted)

    @property
    def patients_exact(self) -> bool:
        """The patient tree is read from the sample."""
        return self.sampled >= self.points

    def keyword_fields(self) -> list[FieldView]:
        return _multi_selects(self.fields, self.schema, self.sampled)

    def range_fields(self) -> list[FieldView]:
        """The numbers and dates a range filter helps with: not lists of them."""
        ranged = ("integer", "float", "datetime")
        return [f for f in self.fields if f.type in ranged and not f.lists]

    def field(self, name: str) -> FieldView | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def one_per(self) -> list[str]:
        """Fields Results may show one hit of each: the patient, DICOM's study and series."""
        names = {f.name for f in self.schema.fields}
        return [name for name in (self.patient_field, STUDY, SERIES) if name and name in names]


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
    indexed = client().store.collection_info(version)["payload_indexes"]
    # A field no sampled point carries (a column of another source, all missing here) offers
    # nothing to filter on.
    carried = [f for f in schema.fields if not payloads or any(f.name in p for p in payloads)]
    fields = tuple(_offered(version, f.name, f.type, indexed, payloads) for f in carried)
    groupings = [
        f.name
        for f in _multi_selects(fields, schema, len(payloads))
        if f.distinct <= GROUP_MAX_VALUES
    ]
    label = schema.label_field
    group = label if label in groupings else next(iter(groupings), None)
    patient = next((f.name for f in schema.fields if PATIENT.fullmatch(f.name)), None)
    patients = _patients(payloads, patient) if patient else ()
    return CollectionView(
        version, points, len(payloads), schema, fields, tuple(groupings), group, patient, patients
    )


def _patients(payloads: list[dict], patient: str) -> tuple[Patient, ...]:
    """Patient -> study -> series, of the payloads that name all three (DICOM's)."""
    tree: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for p in payloads:
        if all(isinstance(p.get(name), str) for name in (patient, STUDY, SERIES)):
            studies = tree.setdefault(p[patient], {})
            studies.setdefault(p[STUDY], {}).setdefault(p[SERIES], []).append(p)
    return tuple(
        Patient(pid, tuple(_study(sid, series) for sid, series in sorted(studies.items())))
        for pid, studies in sorted(tree.items())
    )


def _study(study: str, series: dict[str, list[dict]]) -> Study:
    first = next(iter(series.values()))[0]
    return Study(
        study,
        first.get("study_date"),
        tuple(
            Series(sid, len(images), images[0].get("series_description"), images[0].get("modality"))
            for sid, images in sorted(series.items())
        ),
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
    lists = bool(values) and all(isinstance(v, list) for v in values)
    if kind == "keyword":  # a list (several findings) counts once for each of its values
        counts = Counter(str(v) for value in values for v in _each(value))
        return FieldView(name, kind, tuple(counts.most_common()), lists=lists)
    if kind in ("integer", "float") and not lists:
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers:
            return FieldView(name, kind)
        low, high = min(numbers), max(numbers)
        return FieldView(name, kind, low=low, high=high, histogram=histogram(numbers, kind))
    return FieldView(name, kind, lists=lists)


def _offered(
    version: str, name: str, kind: str, indexed: dict[str, str], payloads: list[dict]
) -> FieldView:
    """An indexed field counted by the store over the whole collection; the others, and
    lists of numbers (never ranged), from the sample."""
    sampled = _field_view(name, kind, payloads)
    if indexed.get(name) != kind or (sampled.lists and kind != "keyword"):
        return sampled
    return replace(_counted_view(version, name, kind), lists=sampled.lists)


def _counted_view(version: str, name: str, kind: str) -> FieldView:
    """A payload-indexed field, counted by the store over the whole collection."""
    store = client().store
    if kind == "keyword":
        hits = store.facet(version, name, limit=FACET_VALUES)
        return FieldView(name, kind, tuple((str(h["value"]), h["count"]) for h in hits), exact=True)
    if kind not in ("integer", "float"):
        return FieldView(name, kind, exact=True)
    ends = store.value_range(version, name)
    if ends is None:
        return FieldView(name, kind, exact=True)
    low, high = ends
    bins = tuple(
        Bin(a, b, store.count(version, {"must": [{"key": name, "range": bounds}]}))
        for a, b, bounds in _bin_ranges(low, high, kind)
    )
    return FieldView(name, kind, low=low, high=high, histogram=bins, exact=True)


def _bin_ranges(low: float, high: float, kind: str) -> list[tuple[float, float, dict]]:
    """The bins `histogram` makes, as range conditions: each value in exactly one."""
    if kind == "integer" and high - low + 1 <= HISTOGRAM_BINS:
        return [(v, v, {"gte": v, "lte": v}) for v in range(int(low), int(high) + 1)]
    if high == low:
        return [(low, high, {"gte": low, "lte": high})]
    width = (high - low) / HISTOGRAM_BINS
    edges = [low + i * width for i in range(HISTOGRAM_BINS)] + [high]
    return [
        (a, b, {"gte": a, "lte": b} if i == HISTOGRAM_BINS - 1 else {"gte": a, "lt": b})
        for i, (a, b) in enumerate(pairwise(edges))
    ]


def histogram(numbers: list[float], kind: str, bins: int = HISTOGRAM_BINS) -> tuple[Bin, ...]:
    """Counts in `bins` equal bins from the lowest number to the highest (integers: a bin per
    value when they span fewer); each number in exactly one bin, the highest in the last."""
    low, high = min(numbers), max(numbers)
    if kind == "integer" and high - low + 1 <= bins:
        counts = Counter(numbers)
        return tuple(Bin(v, v, counts[v]) for v in range(int(low), int(high) + 1))
    if high == low:
        return (Bin(low, high, len(numbers)),)
    width = (high - low) / bins
    counts = Counter(min(int((v - low) / width), bins - 1) for v in numbers)
    return tuple(Bin(low + i * width, low + (i + 1) * width, counts[i]) for i in range(bins))
