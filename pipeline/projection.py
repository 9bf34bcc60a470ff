"""The embedding map: a 2-D t-SNE projection (openTSNE) of a sample of a collection.

Computed once per collection version by a worker (`medindex.project_map`), kept in Redis; the
search page draws it. A version that grows (an ingest into it) keeps its map until the map is
MEDINDEX_MAP_REFRESH_S old, then gets one new map (`map_due`): polling the page never asks a
worker once per point count. The sample: the first `MAP_MAX_POINTS` points in id order
(`pipeline.catalog.first_points`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import redis

from pipeline.catalog import first_points, recorded_or_guessed_schema
from pipeline.store import Reader

MAP_MAX_POINTS = 20_000
_MAP_KEY = "medindex:map:"
_MAP_TTL_S = 30 * 24 * 3600
_STATE_TTL_S = 900  # a map asked for and not made (its task lost) is asked for again after
_PAGE = 1000  # points per retrieve call


@dataclass(frozen=True)
class MapVersion:
    """Which map: one per collection version (never an alias), as made (`created_at`: a
    name made again is another version), however many points it holds."""

    collection: str
    made: float | None

    @property
    def key(self) -> str:
        return f"{_MAP_KEY}{self.collection}:{self.made}"


@dataclass(frozen=True)
class EmbeddingMap:
    version: MapVersion
    points: int  # the version's points when the map was made
    made_at: float  # epoch seconds
    ids: list[str]
    x: list[float]
    y: list[float]
    fields: dict[str, list]  # keyword field -> each sampled point's value (None: missing)


def make_map(reader: Reader, version: MapVersion, max_points: int = MAP_MAX_POINTS) -> EmbeddingMap:
    collection = version.collection
    points = reader.collection_info(collection)["points"]
    sample = first_points(reader, collection, max_points)
    ids = [hit["id"] for hit in sample]
    xy = project(_vectors(reader, collection, ids))
    schema = recorded_or_guessed_schema(reader.metadata(collection), [h["payload"] for h in sample])
    keywords = [f.name for f in schema.fields if f.type == "keyword"]
    values = {name: [h["payload"].get(name) for h in sample] for name in keywords}
    colours = [name for name, found in values.items()
               if name == schema.label_field or _colours(found)]  # fmt: skip
    return EmbeddingMap(
        version=version,
        points=points,
        made_at=time.time(),
        ids=ids,
        x=[round(float(v), 4) for v in xy[:, 0]],
        y=[round(float(v), 4) for v in xy[:, 1]],
        fields={name: values[name] for name in colours},
    )


def _colours(values: list) -> bool:
    """Whether a keyword field colours a map: some points share a value. One that no point
    carries, or with a value per point (a key, an id), would paint noise."""
    present = [json.dumps(v) for v in values if v is not None]
    return len(set(present)) < len(present)


def map_due(kept: dict | None, points: int, refresh_s: float) -> bool:
    """Whether a worker is to make the version's map: none is kept, or the kept one is at least
    `refresh_s` old and the version's count has changed since (a version being filled gets a
    new map at most that often, whatever its count does meanwhile)."""
    if kept is None:
        return True
    return kept["points"] != points and time.time() - kept["made_at"] >= refresh_s


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


def _vectors(reader: Reader, collection: str, ids: list[str]) -> np.ndarray:
    found: dict[str, list[float]] = {}
    for start in range(0, len(ids), _PAGE):
        hits = reader.retrieve(collection, ids[start : start + _PAGE], with_vectors=True)
        found |= {hit["id"]: hit["vector"] for hit in hits}
    return np.array([found[i] for i in ids], dtype=np.float32)


# --- the cache: one map per `MapVersion`, in Redis ----------------------------------------


def cached_map(client: redis.Redis, version: MapVersion) -> dict | None:
    text = client.get(version.key)
    return None if text is None else json.loads(text)


def keep_map(client: redis.Redis, embedding_map: EmbeddingMap) -> None:
    key = embedding_map.version.key
    client.set(key, json.dumps(asdict(embedding_map)), ex=_MAP_TTL_S)
    client.delete(key + ":state")


def claim_map(client: redis.Redis, version: MapVersion, again: bool = False) -> bool:
    """Whether this caller is the one to ask for the map (no one did in the last 15 minutes,
    or it was made since); `again`: the worker making it renews the claim."""
    state = version.key + ":state"
    return bool(client.set(state, "computing", nx=not again, ex=_STATE_TTL_S))


def map_failed(client: redis.Redis, version: MapVersion, reason: str) -> None:
    client.set(version.key + ":state", f"failed: {reason}", ex=_STATE_TTL_S)


def map_state(client: redis.Redis, version: MapVersion) -> str | None:
    """ "computing", "failed: <reason>", or None (not asked since the last map was made, or
    asked over 15 minutes ago)."""
    return client.get(version.key + ":state")
