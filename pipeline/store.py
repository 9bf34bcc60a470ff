"""The store: the only code that talks to Qdrant (a server, or the embedded local engine).

Every public method takes and returns plain data (dicts, lists, floats), so the same calls can
cross the broker to the process that owns an embedded store (see `pipeline.remote_store`).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipeline.errors import MedindexError, first_line
from pipeline.settings import Settings

log = logging.getLogger(__name__)

KEYWORD_FIELDS = ("dx", "dx_type", "sex", "localization")
FLOAT_FIELDS = ("age",)

Hit = dict[str, Any]  # {"id", "score", "payload"[, "vector"]}


class StoreError(MedindexError):
    """Qdrant refused or could not be reached; the message is meant for the user.

    `transient`: worth retrying (unreachable, timeout, 5xx, 429); otherwise the request itself
    was refused and sending it again would fail again.
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


def _check_same_vectors(name: str, existing: dict, spec: dict) -> None:
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


def _is_field_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(f, str) for f in value)


def _hit(point: models.ScoredPoint | models.Record) -> Hit:
    hit: Hit = {"id": str(point.id), "payload": point.payload or {}}
    if isinstance(point, models.ScoredPoint):
        hit["score"] = float(point.score)
    if point.vector is not None:
        hit["vector"] = [float(x) for x in point.vector]
    return hit


class Store:
    """Collections of points: create, write, and the seed's searches."""

    def __init__(
        self, client: QdrantClient, description: str, embedded_path: Path | None = None
    ) -> None:
        self.client = client
        self.description = description
        self.embedded_path = embedded_path  # the embedded engine's folder; None for a server

    # --- writes -------------------------------------------------------------------------

    def ensure_collection(self, name: str, spec: dict, bulk: bool = False) -> dict:
        """Create a cosine collection recording `spec` (what makes its vectors: model,
        pooling, dim, ...) with payload indexes; refuse to reuse one made another way.

        `bulk`: HNSW construction deferred (m=0) until `finish_bulk`, Qdrant's advice for a
        large first load.
        """
        with self._errors():
            if self.client.collection_exists(name):
                existing = self.collection_info(name)
                _check_same_vectors(name, existing, spec)
                self._log_writes_ahead(name)
                return existing
            self.client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=spec["dim"], distance=models.Distance.COSINE
                ),
                hnsw_config=models.HnswConfigDiff(m=0) if bulk else None,
                metadata=spec | {"created_at": time.time()},
            )
            self._create_payload_indexes(name)
            self._log_writes_ahead(name)
            log.info(
                "created collection %s (%d-d cosine) in %s", name, spec["dim"], self.description
            )
            return self.collection_info(name)

    def finish_bulk(self, name: str, m: int = 16, timeout_s: float = 3600) -> None:
        """Build the HNSW index deferred during a bulk load and wait until it is ready."""
        deadline = time.monotonic() + timeout_s
        with self._errors():
            self.client.update_collection(name, hnsw_config=models.HnswConfigDiff(m=m))
            while (
                status := self.client.get_collection(name).status
            ) != models.CollectionStatus.GREEN:
                if status == models.CollectionStatus.RED:
                    raise StoreError(f"Qdrant failed to optimise {name!r} (status red)")
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{name!r} not indexed after {timeout_s:.0f}s ({status.value})"
                    )
                if status == models.CollectionStatus.GREY:  # optimisers wait for an update
                    self.client.update_collection(
                        name, optimizers_config=models.OptimizersConfigDiff()
                    )
                time.sleep(0.5)

    def set_metadata(self, name: str, metadata: dict) -> None:
        """Merged into what the collection already records."""
        with self._errors():
            self.client.update_collection(name, metadata=metadata)

    def delete_collection(self, name: str) -> None:
        with self._errors():
            self.client.delete_collection(name)

    def collections(self) -> list[str]:
        with self._errors():
            return sorted(c.name for c in self.client.get_collections().collections)

    def aliases(self) -> dict[str, str]:
        """alias -> collection."""
        with self._errors():
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def switch_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic operation."""
        operations: list = []
        if alias in self.aliases():
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        with self._errors():
            self.client.update_collection_aliases(change_aliases_operations=operations)

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        """One write call; it returns once Qdrant has applied the points."""
        with self._errors():
            self.client.upsert(
                name,
                points=models.Batch(
                    ids=list(ids), vectors=vectors.tolist(), payloads=list(payloads)
                ),
                wait=True,
            )

    # --- reads --------------------------------------------------------------------------

    def collection_info(self, name: str) -> dict:
        with self._errors():
            if not self.client.collection_exists(name):
                raise StoreError(f"collection {name!r} does not exist")
            info = self.client.get_collection(name)
            params = info.config.params.vectors
            count = self.client.count(name, exact=True).count
            return {
                "name": name,
                "dim": params.size,
                "distance": params.distance.value,
                "points": count,
                "metadata": info.config.metadata or {},
            }

    def metadata(self, name: str) -> dict:
        """What the collection records about its vectors (cheap: no count)."""
        with self._errors():
            if not self.client.collection_exists(name):
                raise StoreError(f"collection {name!r} does not exist")
            return self.client.get_collection(name).config.metadata or {}

    def search(
        self,
        name: str,
        vector: Sequence[float],
        filter: dict | None = None,
        limit: int = 10,
        score_threshold: float | None = None,
        with_payload: bool | list | dict = True,
        with_vectors: bool = False,
    ) -> list[Hit]:
        with self._errors():
            response = self.client.query_points(
                name,
                query=list(vector),
                query_filter=parse_filter(filter),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=parse_payload_selector(with_payload),
                with_vectors=with_vectors,
            )
        return [_hit(p) for p in response.points]

    def search_batch(self, name: str, queries: Sequence[dict]) -> list[list[Hit]]:
        """Each query: {"vector", "filter"?, "limit"?, "score_threshold"?, "with_payload"?}."""
        with self._errors():
            requests = [
                models.QueryRequest(
                    query=list(q["vector"]),
                    filter=parse_filter(q.get("filter")),
                    limit=q.get("limit", 10),
                    score_threshold=q.get("score_threshold"),
                    with_payload=parse_payload_selector(q.get("with_payload", True)),
                )
                for q in queries
            ]
            responses = self.client.query_batch_points(name, requests=requests)
        return [[_hit(p) for p in r.points] for r in responses]

    def groups(
        self,
        name: str,
        vector: Sequence[float],
        group_by: str,
        limit: int = 10,
        group_size: int = 1,
        filter: dict | None = None,
    ) -> list[dict]:
        """The closest `group_size` points for each of `limit` values of `group_by`."""
        with self._errors():
            result = self.client.query_points_groups(
                name,
                group_by=group_by,
                query=list(vector),
                query_filter=parse_filter(filter),
                limit=limit,
                group_size=group_size,
            )
        return [{"group": g.id, "hits": [_hit(p) for p in g.hits]} for g in result.groups]

    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        filter: dict | None = None,
        limit: int = 10,
    ) -> list[Hit]:
        """Points like the positive examples and unlike the negative ones (examples excluded)."""
        with self._errors():
            query = models.RecommendQuery(
                recommend=models.RecommendInput(positive=list(positive), negative=list(negative))
            )
            response = self.client.query_points(
                name, query=query, query_filter=parse_filter(filter), limit=limit
            )
        return [_hit(p) for p in response.points]

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        with self._errors():
            points = self.client.retrieve(name, ids=list(ids), with_vectors=with_vectors)
        return [_hit(p) for p in points]

    def count(self, name: str, filter: dict | None = None) -> int:
        with self._errors():
            return self.client.count(name, count_filter=parse_filter(filter), exact=True).count

    def scroll(
        self, name: str, filter: dict | None = None, limit: int = 10, offset: str | None = None
    ) -> dict:
        """One page of points in id order; pass `next_offset` back for the next page."""
        with self._errors():
            points, next_offset = self.client.scroll(
                name, scroll_filter=parse_filter(filter), limit=limit, offset=offset
            )
        return {
            "points": [_hit(p) for p in points],
            "next_offset": None if next_offset is None else str(next_offset),
        }

    def ping(self) -> None:
        with self._errors():
            self.client.get_collections()

    def close(self) -> None:
        self.client.close()

    # --- helpers ------------------------------------------------------------------------

    def _create_payload_indexes(self, name: str) -> None:
        with warnings.catch_warnings():
            # The embedded engine ignores payload indexes; the server uses them.
            warnings.simplefilter("ignore", UserWarning)
            for field in KEYWORD_FIELDS:
                self.client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
            for field in FLOAT_FIELDS:
                self.client.create_payload_index(name, field, models.PayloadSchemaType.FLOAT)

    def _log_writes_ahead(self, name: str) -> None:
        """Put an embedded collection's SQLite file in write-ahead-log mode (it stays so).

        The local engine commits once per point: with SQLite's default rollback journal each
        commit creates, syncs and deletes a journal file; with a write-ahead log it appends
        and syncs once, about 3x the points per second here, as durable (synchronous=FULL).
        """
        path = self.embedded_path and self.embedded_path / "collection" / name / "storage.sqlite"
        if path and path.is_file():
            with closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn qdrant-client's and httpx's exceptions into one readable StoreError."""
        where = self.description
        try:
            yield
        except MedindexError:
            raise
        except UnexpectedResponse as exc:
            detail = exc.content.decode(errors="replace")[:300] if exc.content else ""
            transient = exc.status_code is not None and (
                exc.status_code >= 500 or exc.status_code == 429
            )
            message = f"Qdrant ({where}) answered {exc.status_code}: {detail}"
            raise StoreError(message, transient=transient) from exc
        except (ResponseHandlingException, OSError, TimeoutError) as exc:
            message = f"cannot reach Qdrant at {where}: {first_line(exc)}"
            raise StoreError(message, transient=True) from exc
        except sqlite3.OperationalError as exc:  # the embedded engine's files: locked, disk full
            message = f"Qdrant ({where}) cannot use its storage: {first_line(exc)}"
            raise StoreError(message, transient=True) from exc
        except (ValueError, ValidationError) as exc:
            raise StoreError(f"Qdrant ({where}) refused the request: {first_line(exc)}") from exc


def connect(settings: Settings) -> Store:
    """The store this process may open directly: a server, or the embedded folder."""
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        timeout = math.ceil(settings.qdrant_timeout_s)
        client = QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=timeout)
        return Store(client, settings.qdrant_url)
    path = settings.embedded_store_path
    path.mkdir(parents=True, exist_ok=True)
    try:
        client = QdrantClient(path=str(path))
    except RuntimeError as exc:  # the folder is locked by another process
        raise StoreError(f"embedded store {path} is in use by another process") from exc
    return Store(client, f"embedded store {path}", embedded_path=path)
