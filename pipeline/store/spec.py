"""A collection's spec (what makes its vectors, its schema, its payload indexes): what both
backends check before they create a collection or reuse one."""

from __future__ import annotations

from pipeline.store.errors import StoreError

INDEX_TYPES = ("keyword", "integer", "float", "bool", "datetime", "uuid")

# How both engines quantize and search (here, not in the server's layout, so that the Edge
# index builder, a child process, imports no qdrant-client).
# Oversampling for int8 search: fetch twice the hits on quantized vectors, rescore them on the
# originals, keep the best (Qdrant's advice for scalar quantization).
RESCORE_OVERSAMPLING = 2.0
INT8_QUANTILE = 0.99  # clip the 1 % extreme values: int8 keeps its range for the rest
# A search's HNSW beam (Qdrant's default is ef_construct, 100). At 1,000,000 points and a filter
# keeping 15 % of them, recall@10 was 0.942 at the default and 0.984 at 200, for about 3 ms
# more a search (BENCHMARKS.md, the scale curve).
SEARCH_HNSW_EF = 200


def payload_indexes(spec: dict) -> dict[str, str]:
    """field -> index type, from the collection's spec (`payload_indexes`, made from the
    source's schema by the producer); none named, none made."""
    indexes = spec.get("payload_indexes", {})
    for field, kind in indexes.items():
        if kind not in INDEX_TYPES:
            raise StoreError(f"payload index {field!r}: type {kind!r} is not one of {INDEX_TYPES}")
    return dict(indexes)


def added_indexes(recorded: dict, spec: dict) -> dict[str, str]:
    """The indexes `spec` asks for that an existing collection (its metadata `recorded`) has
    not got yet: a second source brings new fields."""
    have = recorded.get("payload_indexes", {})
    return {f: kind for f, kind in payload_indexes(spec).items() if f not in have}


def schema_update(recorded: dict, spec: dict) -> dict:
    """What an existing collection records anew when a source adds fields to it."""
    keys = ("schema", "payload_indexes")
    return {k: spec[k] for k in keys if k in spec and spec[k] != recorded.get(k)}


def check_same_vectors(name: str, existing: dict, spec: dict) -> None:
    """Refuse to reuse a collection whose vectors were made another way."""
    if existing["dim"] != spec["dim"]:
        have, want = existing["dim"], spec["dim"]
        raise StoreError(f"collection {name!r} holds {have}-d vectors, the model makes {want}-d")
    recorded = existing["metadata"]
    for key in ("model", "pooling"):
        if key in recorded and key in spec and recorded[key] != spec[key]:
            raise StoreError(
                f"collection {name!r} was made with {key} {recorded[key]!r}, not {spec[key]!r}: "
                "use `medindex reindex` for a new model"
            )
