"""Qdrant's JSON filter format, the one filter language, and payload selectors: parsed here by
qdrant-client's models, for both backends (Edge's translation: `pipeline.store.edge_filters`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from qdrant_client import models

from pipeline.store.errors import StoreError


def parse_filter(value: dict | models.Filter | None) -> models.Filter | None:
    """A filter in Qdrant's own JSON format, validated by qdrant-client's models."""
    if value is None or isinstance(value, models.Filter):
        return value
    try:
        return models.Filter.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        # Drop pydantic's union bookkeeping (`list[union[...]]`, class names) from the path.
        parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper())]
        where = ".".join(p for p in parts if "[" not in p)
        raise StoreError(f"malformed filter at {where or 'top level'}: {error['msg']}") from exc


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
