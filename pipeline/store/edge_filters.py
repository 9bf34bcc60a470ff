"""Qdrant's JSON filters (parsed by qdrant-client's models) in Qdrant Edge's types: the one
place where the filter language is translated for the embedded engine."""

from __future__ import annotations

from typing import Any

import qdrant_edge as edge
from qdrant_client import models

from pipeline.store.errors import StoreError


def edge_filter(value: models.Filter | None) -> edge.Filter | None:
    if value is None:
        return None
    min_should = value.min_should
    return edge.Filter(
        must=_conditions(value.must),
        should=_conditions(value.should),
        must_not=_conditions(value.must_not),
        min_should=None
        if min_should is None
        else edge.MinShould(_conditions(min_should.conditions), min_should.min_count),
    )


def edge_payload_selector(value: Any) -> Any:
    """qdrant-client's payload selector (see `parse_payload_selector`) for Edge."""
    if isinstance(value, models.PayloadSelectorInclude):
        return edge.PayloadSelector.Include(list(value.include))
    if isinstance(value, models.PayloadSelectorExclude):
        return edge.PayloadSelector.Exclude(list(value.exclude))
    return value  # a bool or a list of fields: the same in both


def _conditions(value: Any) -> list | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [_condition(c) for c in items]


def _condition(c: Any) -> Any:
    if isinstance(c, models.FieldCondition):
        return _field(c)
    if isinstance(c, models.IsEmptyCondition):
        return edge.IsEmptyCondition(c.is_empty.key)
    if isinstance(c, models.IsNullCondition):
        return edge.IsNullCondition(c.is_null.key)
    if isinstance(c, models.HasIdCondition):
        return edge.HasIdCondition({str(i) if not isinstance(i, int) else i for i in c.has_id})
    if isinstance(c, models.HasVectorCondition):
        return edge.HasVectorCondition(c.has_vector)
    if isinstance(c, models.NestedCondition):
        return edge.NestedCondition(c.nested.key, edge_filter(c.nested.filter))
    if isinstance(c, models.Filter):
        return edge_filter(c)
    raise StoreError(f"filter condition {type(c).__name__} is not supported by Qdrant Edge")


def _field(c: models.FieldCondition) -> edge.FieldCondition:
    kinds = {
        "match": _match(c.match),
        "range": _range(c.range),
        "values_count": None
        if c.values_count is None
        else edge.ValuesCount(**c.values_count.model_dump(exclude_none=True)),
        "is_empty": c.is_empty,
        "is_null": c.is_null,
    }
    unsupported = [k for k in ("geo_bounding_box", "geo_radius", "geo_polygon") if getattr(c, k)]
    if unsupported:
        raise StoreError(f"filter condition {unsupported[0]} is not supported by medindex")
    return edge.FieldCondition(c.key, **{k: v for k, v in kinds.items() if v is not None})


def _match(m: Any) -> Any:
    if m is None:
        return None
    if isinstance(m, models.MatchValue):
        return edge.MatchValue(m.value)
    if isinstance(m, models.MatchAny):
        return edge.MatchAny(list(m.any))
    if isinstance(m, models.MatchExcept):
        return edge.MatchExcept(list(m.except_))
    if isinstance(m, models.MatchText):
        return edge.MatchText(m.text)
    if isinstance(m, models.MatchPhrase):
        return edge.MatchPhrase(m.phrase)
    raise StoreError(f"match {type(m).__name__} is not supported by Qdrant Edge")


def _range(r: Any) -> Any:
    if r is None:
        return None
    bounds = {k: getattr(r, k) for k in ("gte", "gt", "lte", "lt")}
    if isinstance(r, models.DatetimeRange):
        return edge.RangeDateTime(**{k: _iso(v) for k, v in bounds.items()})
    return edge.RangeFloat(**bounds)


def _iso(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else value.isoformat()
