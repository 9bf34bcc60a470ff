"""The store: the only code that talks to Qdrant, through one interface and two backends.

`server` (pipeline.store_server): qdrant-client against a Qdrant server, the production path.
`edge` (pipeline.store_edge): Qdrant Edge, the real engine in-process, the embedded default.
Every public method takes and returns plain data (dicts, lists, floats), so the same calls can
cross the broker to the process that owns an embedded store (see `pipeline.remote_store`).
Qdrant's JSON filter format is the one filter language: parsed here, by qdrant-client's models.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from qdrant_client import models

from pipeline.errors import MedindexError
from pipeline.settings import Settings

INDEX_TYPES = ("keyword", "integer", "float", "bool", "datetime", "uuid")

Hit = dict[str, Any]  # {"id", "score", "payload"[, "vector"]}


class StoreError(MedindexError):
    """Qdrant refused or could not be reached; the message is meant for the user.

    `transient`: worth retrying (unreachable, timeout, 5xx, 429, a shard busy); otherwise the
    request itself was refused and sending it again would fail again.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


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


def to_hit(point: Any) -> Hit:
    """A scored point or a record, of either engine (both carry id, payload, vector, and a
    score when scored)."""
    hit: Hit = {"id": str(point.id), "payload": point.payload or {}}
    score = getattr(point, "score", None)
    if score is not None:
        hit["score"] = float(score)
    if point.vector is not None:
        hit["vector"] = [float(x) for x in point.vector]
    return hit


def check_finite(vectors: np.ndarray) -> None:
    """Both engines would store a NaN vector (the server refuses it): refuse it everywhere."""
    if not np.isfinite(vectors).all():
        raise StoreError("vectors hold NaN or infinite values")


def recommend_vector(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Qdrant's default `average_vector` strategy: mean(pos) + (mean(pos) - mean(neg))."""
    mean = positives.mean(axis=0)
    return mean + (mean - negatives.mean(axis=0)) if len(negatives) else mean


def wait_for_index(store: Any, name: str, timeout_s: float = 3600, poll_s: float = 0.5) -> None:
    """`start_index`, then `index_ready` until true: a loop of short calls, so that whoever
    owns the store keeps serving in between."""
    deadline = time.monotonic() + timeout_s
    store.start_index(name)
    while not store.index_ready(name):
        if time.monotonic() > deadline:
            raise StoreError(f"{name!r} not indexed after {timeout_s:.0f}s")
        time.sleep(poll_s)


def refuse_local_mode(root: Path) -> None:
    """A folder written by qdrant-client's local mode (the embedded engine before Edge) is
    never misread as an empty store."""
    if (root / "meta.json").is_file() or (root / "collection").is_dir():
        raise StoreError(
            f"{root} holds a store made by the old embedded engine (qdrant-client local mode), "
            f"which medindex no longer reads: move it aside (mv {root} {root}.old) and rebuild "
            "each collection from its source with `medindex reindex`"
        )


def _is_field_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(f, str) for f in value)


class Store(ABC):
    """Collections of points: create, write, and the seed's searches.

    `name` in every read may be a collection or an alias.
    """

    description: str

    # --- management: the producer's and reindex's calls, never a search process' ---------

    @abstractmethod
    def ensure_collection(self, name: str, spec: dict, bulk: bool = False) -> None:
        """Create a cosine collection recording `spec` (what makes its vectors: model,
        pooling, dim, ...) with payload indexes; refuse to reuse one made another way.

        `bulk`: HNSW construction deferred until `finish_bulk`, Qdrant's advice for a large
        first load.
        """

    @abstractmethod
    def start_index(self, name: str) -> None:
        """Start building the HNSW index deferred during a bulk load (returns at once)."""

    @abstractmethod
    def index_ready(self, name: str) -> bool:
        """Whether the index `start_index` began is built; raises if building failed."""

    def finish_bulk(self, name: str, timeout_s: float = 3600) -> None:
        """Build the index deferred during a bulk load and wait until it is ready."""
        wait_for_index(self, name, timeout_s)

    @abstractmethod
    def set_metadata(self, name: str, metadata: dict) -> None:
        """Merged into what the collection already records."""

    @abstractmethod
    def delete_collection(self, name: str) -> None: ...

    @abstractmethod
    def switch_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic operation."""

    # --- writes: the upsert task's only call ----------------------------------------------

    @abstractmethod
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        """One write call; it returns once the points are applied and durable. A missing
        collection is a refusal: a writer never creates one."""

    # --- reads ----------------------------------------------------------------------------

    @abstractmethod
    def collections(self) -> list[str]: ...

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """alias -> collection."""

    @abstractmethod
    def collection_info(self, name: str) -> dict:
        """{"name", "dim", "distance", "points", "metadata"}."""

    @abstractmethod
    def metadata(self, name: str) -> dict:
        """What the collection records about its vectors (cheap: no count)."""

    @abstractmethod
    def search(
        self,
        name: str,
        vector: Sequence[float],
        filter: dict | None = None,
        limit: int = 10,
        score_threshold: float | None = None,
        with_payload: bool | list | dict = True,
        with_vectors: bool = False,
    ) -> list[Hit]: ...

    @abstractmethod
    def search_batch(self, name: str, queries: Sequence[dict]) -> list[list[Hit]]:
        """Each query: {"vector", "filter"?, "limit"?, "score_threshold"?, "with_payload"?}."""

    @abstractmethod
    def groups(
        self,
        name: str,
        vector: Sequence[float],
        group_by: str,
        limit: int = 10,
        group_size: int = 1,
        filter: dict | None = None,
    ) -> list[dict]:
        """The closest `group_size` points for each of `limit` values of `group_by`:
        [{"group", "hits"}], groups in the order of their best hit."""

    @abstractmethod
    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        filter: dict | None = None,
        limit: int = 10,
    ) -> list[Hit]:
        """Points like the positive examples and unlike the negative ones (examples excluded)."""

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]: ...

    @abstractmethod
    def count(self, name: str, filter: dict | None = None) -> int: ...

    @abstractmethod
    def scroll(
        self, name: str, filter: dict | None = None, limit: int = 10, offset: str | None = None
    ) -> dict:
        """One page of points in id order; pass `next_offset` back for the next page."""

    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


def connect(settings: Settings) -> Store:
    """The store this process may open directly: a server, or the embedded folder (which
    only the store worker opens; everyone else calls it through the broker)."""
    if settings.store_backend == "server":
        from pipeline.store_server import ServerStore

        return ServerStore.connect(settings)
    from pipeline.store_edge import EdgeStore

    return EdgeStore(settings.embedded_store_path)
