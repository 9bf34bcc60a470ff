"""A collection's schema: the source's fields, the user's overrides, and what the collection
already records (a second source adds fields; a field may not change type)."""

from __future__ import annotations

from dataclasses import replace

from pipeline.errors import MedindexError
from pipeline.sources import Field, Schema

FIELD_TYPES = ("keyword", "integer", "float", "datetime", "bool")


class SchemaError(MedindexError):
    """A schema the collection cannot take; the message says which field and why."""


def parse_index(text: str) -> tuple[str, str]:
    """`FIELD:TYPE` (`--index`) -> (field, type)."""
    field, _, kind = text.rpartition(":")
    if not field or kind not in FIELD_TYPES:
        raise SchemaError(f"--index {text!r}: expected FIELD:TYPE, TYPE one of {FIELD_TYPES}")
    return field, kind


def collection_schema(
    source: Schema,
    label_field: str | None = None,
    overrides: dict[str, str] | None = None,
    recorded: dict | None = None,
) -> Schema:
    """The schema the collection records after this source: the source's fields with the
    `--index` overrides, merged into the `recorded` one (`Schema.to_dict()`), if any."""
    fields = {f.name: f.type for f in source.fields} | dict(overrides or {})
    label = label_field or source.label_field
    key = source.key_field
    if recorded:
        old = Schema.from_dict(recorded)
        for name, kind in old.indexes().items():
            if fields.setdefault(name, kind) != kind:
                raise SchemaError(
                    f"field {name!r} is {fields[name]} in this source but {kind} in the "
                    f"collection: use --index {name}:{kind}, or another collection"
                )
        label = label_field or old.label_field or label
        key = old.key_field or key
        # The collection's own fields keep their order; new ones follow.
        fields = old.indexes() | fields
    if label is not None and label not in fields:
        raise SchemaError(f"label field {label!r} is not a field of the data ({', '.join(fields)})")
    return replace(
        source,
        fields=tuple(Field(name, kind) for name, kind in fields.items()),
        key_field=key,
        label_field=label,
    )
