"""Qdrant's JSON filter format, the one filter language, and payload selectors: parsed here by
qdrant-client's models, for both backends (Edge's translation: `pipeline.store.edge_filters`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError
from qdrant_client import models

from pipeline.store.errors import StoreError


def parse_filter(value: dict | models.Filter | None) -> models.Filter | None:
    """A filter in Qdrant's own JSON format, validated by qdrant-client's models."""
    if value is None or isinstance(value, models.Filter):
        return value
    try:
        parsed = models.Filter.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        # Drop pydantic's union bookkeeping (`list[union[...]]`, class names) from the path.
        parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper())]
        where = ".".join(p for p in parts if "[" not in p)
        raise StoreError(f"malformed filter at {where or 'top level'}: {error['msg']}") from exc
    for condition in conditions(parsed):
        if isinstance(condition, models.FieldCondition) and condition.range is not None:
            _check_range(condition.key, condition.range)
    return parsed


def conditions(parsed: models.Filter) -> Iterator[Any]:
    """Every condition of a filter, nested filters' included (their own clauses, not them)."""
    clauses = (parsed.must, parsed.should, parsed.must_not)
    if parsed.min_should is not None:
        clauses += (parsed.min_should.conditions,)
    for clause in clauses:
        for condition in clause if isinstance(clause, list) else [clause] if clause else []:
            if isinstance(condition, models.Filter):
                yield from conditions(condition)
            elif isinstance(condition, models.NestedCondition):
                yield condition
                yield from conditions(condition.nested.filter)
            else:
                yield condition


def condition_key(condition: Any) -> str | None:
    """The payload field a condition reads (None: ids, vectors)."""
    if isinstance(condition, models.FieldCondition):
        return condition.key
    if isinstance(condition, models.NestedCondition):
        return condition.nested.key
    if isinstance(condition, models.IsEmptyCondition):
        return condition.is_empty.key
    if isinstance(condition, models.IsNullCondition):
        return condition.is_null.key
    return None


# A range's lower bounds and upper bounds, and whether each pair leaves nothing between them.
_INVERTED = {
    ("gte", "lte"): lambda low, high: low > high,
    ("gte", "lt"): lambda low, high: low >= high,
    ("gt", "lte"): lambda low, high: low >= high,
    ("gt", "lt"): lambda low, high: low >= high,
}


def _check_range(key: str, bounds: models.Range | models.DatetimeRange) -> None:
    """A range no value can fall in (`gte` 60 with `lte` 20) is a mistake, not an empty
    answer."""
    for (lower, upper), inverted in _INVERTED.items():
        low, high = getattr(bounds, lower), getattr(bounds, upper)
        if low is None or high is None:
            continue
        try:
            empty = inverted(low, high)
        except TypeError:  # a date against a number: the store says what is wrong
            continue
        if empty:
            raise StoreError(
                f"inverted range on {key!r}: nothing is {_shown(lower, low)} and "
                f"{_shown(upper, high)}"
            )


def _shown(bound: str, value: object) -> str:
    sign = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}[bound]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{sign} {value}"


def parse_payload_selector(value: bool | list | dict) -> Any:
    """`true`/`false`, a list of fields, or {"include": [...]} / {"exclude": [...]}."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, fields),) = value.items()
        if kind in ("include", "exclude") and _is_field_list(fields):
            selector = (
                models.PayloadSelectorInclude
                if kind == "include"
                else models.PayloadSelectorExclude
            )
            return selector(**{kind: list(fields)})
    if isinstance(value, bool) or _is_field_list(value):
        return value
    raise StoreError(
        'payload selector: true, false, [fields], {"include": [...]} or {"exclude": [...]}'
    )


def _is_field_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(f, str) for f in value)
