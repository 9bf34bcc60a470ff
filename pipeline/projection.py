"""The embedding map: a 2-D t-SNE projection (openTSNE) of a sample of a collection.

Computed once per collection version (and point count) by a worker (`medindex.project_map`),
kept in Redis; the search page draws it. The sample: the first `MAP_MAX_POINTS` points in id
order (`pipeline.catalog.first_points`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import redis

from pipeline.catalog import collection_schema, first_points
from pipeline.remote_store import AnyReader

MAP_MAX_POINTS = 20_000
MAP_TASK = "medindex.project_map"
_MAP_KEY = "medindex:map:"
_MAP_TTL_S = 30 * 24 * 3600
_STATE_TTL_S = 3600  # a computation not done in an hour may be asked for again
_PAGE = 1000  # points per retrieve call


@dataclass(frozen=True)
class EmbeddingMap:
    collection: str  # the version (never an alias): a map belongs to one
    points: int  # in the collection when it was made
    ids: list[str]
    x: list[float]
    y: list[float]
    fields: dict[str, list]  # keyword field -> each sampled point's value (None: missing)


def make_map(reader: AnyReader, collection: str, max_points: int = MAP_MAX_POINTS) -> EmbeddingMap:
    points = reader.collection_info(collection)["points"]
    sample = first_points(reader, collection, max_points)
    ids = [hit["id"] for hit in sample]
    xy = project(_vectors(reader, collection, ids))
    schema = collection_schema(reader.metadata(collection), [h["payload"] for h in sample])
    keywords = [f.name for f in schema.fields if f.type == "keyword"]
    return EmbeddingMap(
        collection=collection,
        points=points,
        ids=ids,
        x=[round(float(v), 4) for v in xy[:, 0]],
        y=[round(float(v), 4) for v in xy[:, 1]],
        fields={name: [h["payload"].get(name) for h in sample] for name in keywords},
    )


def project(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, d) -> (n, 2): t-SNE with cosine distances, the metric the collections search with."""
    from openTSNE import TSNE  # numba compiles on import: only where a map is made

    n = len(vectors)
    if n < 4:  # t-SNE needs neighbours; a handful of points is drawn on a line
        return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    tsne = TSNE(
        perplexity=min(30.0, (n - 1) / 3),
        metric="cosine",
        initialization="pca",
        random_state=seed,
        n_jobs=-1,
    )
    return np.asarray(tsne.fit(vectors.astype(np.float32)))


def _vectors(reader: AnyReader, collection: str, ids: list[str]) -> np.ndarray:
    found: dict[str, list[float]] = {}
    for start in range(0, len(ids), _PAGE):
        hits = reader.retrieve(collection, ids[start : start + _PAGE], with_vectors=True)
        found |= {hit["id"]: hit["vector"] for hit in hits}
    return np.array([found[i] for i in ids], dtype=np.float32)


# --- the cache: one map per collection version and point count, in Redis --------------------


def _key(collection: str, points: int) -> str:
    return f"{_MAP_KEY}{collection}:{points}"


def cached_map(client: redis.Redis, collection: str, points: int) -> dict | None:
    text = client.get(_key(collection, points))
    return None if text is None else json.loads(text)


def keep_map(client: redis.Redis, embedding_map: EmbeddingMap) -> None:
    key = _key(embedding_map.collection, embedding_map.points)
    client.set(key, json.dumps(asdict(embedding_map)), ex=_MAP_TTL_S)
    client.delete(key + ":state")


def claim_map(client: redis.Redis, collection: str, points: int) -> bool:
    """Whether this caller is the one to ask for the map (no one asked within the hour)."""
    return bool(
        client.set(_key(collection, points) + ":state", "computing", nx=True, ex=_STATE_TTL_S)
    )


def map_failed(client: redis.Redis, collection: str, points: int, reason: str) -> None:
    client.set(_key(collection, points) + ":state", f"failed: {reason}", ex=_STATE_TTL_S)


def map_state(client: redis.Redis, collection: str, points: int) -> str | None:
    """ "computing", "failed: <reason>", or None (never asked, or asked over an hour ago)."""
    return client.get(_key(collection, points) + ":state")
