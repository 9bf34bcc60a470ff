"""The collections a store holds, with what made them: `medindex collections` and the page."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.sources.base import Field, FieldType, Schema
from pipeline.store import Reader


@dataclass(frozen=True)
class CollectionRow:
    collection: str
    alias: str | None  # the alias serving it, if any
    points: int
    indexed_points: int  # in the HNSW index
    unindexed_points: int  # written since its last build: searched exactly
    dim: int
    model: str | None
    pooling: str | None
    dataset: str | None
    quality: float | None  # k-NN label agreement, recorded by reindex
    status: str | None
    created_at: float | None


def collection_rows(store: Reader) -> list[CollectionRow]:
    serving = {collection: alias for alias, collection in store.aliases().items()}
    rows = []
    for name in store.collections():
        info = store.collection_info(name)
        meta = info["metadata"]
        rows.append(
            CollectionRow(
                collection=name,
                alias=serving.get(name),
                points=info["points"],
                indexed_points=info["indexed_points"],
                unindexed_points=info["unindexed_points"],
                dim=info["dim"],
                model=meta.get("model"),
                pooling=meta.get("pooling"),
                dataset=meta.get("dataset"),
                quality=meta.get("quality"),
                status=meta.get("status"),
                created_at=meta.get("created_at"),
            )
        )
    return rows


def first_points(store: Reader, collection: str, most: int, page: int = 1000) -> list[dict]:
    """Up to `most` points with their payloads, in id order: a fair sample, since point ids
    are hashes of the images' keys."""
    points: list[dict] = []
    offset = None
    while len(points) < most:
        answer = store.scroll(collection, limit=min(page, most - len(points)), offset=offset)
        points += answer["points"]
        offset = answer["next_offset"]
        if offset is None:
            break
    return points


def recorded_or_guessed_schema(metadata: dict, payloads: list[dict]) -> Schema:
    """The collection's recorded schema; a collection made before schemas were recorded gets
    one guessed from a sample of its payloads (no label field: nothing says which it is)."""
    if "schema" in metadata:
        return Schema.from_dict(metadata["schema"])
    kinds: dict[str, set[str]] = {}
    for payload in payloads:
        for name, value in payload.items():
            if name != SOURCE_FIELD and value is not None:
                kinds.setdefault(name, set()).add(_kind(value))
    fields = tuple(
        Field(name, _FIELD_TYPE[frozenset(found)])
        for name, found in kinds.items()
        if frozenset(found) in _FIELD_TYPE
    )
    return Schema(fields, key_field=_key_field(fields, payloads))


SOURCE_FIELD = "source"  # every payload's reference to its picture (Source.reference)
_FIELD_TYPE: dict[frozenset[str], FieldType] = {
    frozenset({"str"}): "keyword",
    frozenset({"int"}): "integer",
    frozenset({"float"}): "float",
    frozenset({"int", "float"}): "float",
    frozenset({"bool"}): "bool",
}


def _kind(value: object) -> str:
    return type(value).__name__


def _key_field(fields: tuple[Field, ...], payloads: list[dict]) -> str | None:
    """The keyword field that holds each point's key (its `source.key`), if one does."""
    keys = [p.get(SOURCE_FIELD, {}).get("key") for p in payloads]
    for field in fields:
        if (
            field.type == "keyword"
            and keys
            and all(p.get(field.name) == key for p, key in zip(payloads, keys, strict=True))
        ):
            return field.name
    return None
