"""The `server` backend: qdrant-client against a Qdrant server (compose, Kubernetes).

`ServerStore.local(path)` opens qdrant-client's local mode instead: the server's API over a
pure-Python engine, kept only as the stand-in for a server in the contract tests and the bench
(no Qdrant server runs where medindex is tested).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
from pydantic import ValidationError
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipeline.errors import MedindexError, first_line, mask_url
from pipeline.settings import Settings
from pipeline.store.base import Store
from pipeline.store.errors import StoreError
from pipeline.store.filters import parse_filter, parse_payload_selector
from pipeline.store.layout import CollectionLayout, collection_layout
from pipeline.store.points import check_finite, neighbours, range_end, to_hit
from pipeline.store.spec import added_indexes, check_same_vectors, payload_indexes, schema_update
from pipeline.store.types import Hit, HitOptions, NeighbourRequest, RecommendRequest, SearchRequest

log = logging.getLogger(__name__)

# gRPC answers worth retrying (as REST's 5xx and 429): the server down or restarting, too slow,
# or overloaded. Any other status is the request's fault and would fail again.
TRANSIENT_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class ServerStore(Store):
    def __init__(
        self, client: QdrantClient, description: str, layout: CollectionLayout | None = None
    ) -> None:
        self.client = client
        self.description = description
        self.layout = layout or CollectionLayout()

    @classmethod
    def connect(cls, settings: Settings) -> ServerStore:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        timeout = math.ceil(settings.qdrant_timeout_s)
        client = QdrantClient(
            url=settings.qdrant_url,
            api_key=api_key,
            timeout=timeout,
            prefer_grpc=settings.qdrant_prefer_grpc,
            grpc_port=settings.qdrant_grpc_port,
        )
        return cls(client, mask_url(settings.qdrant_url), collection_layout(settings))

    @classmethod
    def local(cls, path: Path, layout: CollectionLayout | None = None) -> ServerStore:
        """qdrant-client's local mode in `path`: the server's API, for tests and the bench."""
        path.mkdir(parents=True, exist_ok=True)
        try:
            client = QdrantClient(path=str(path))
        except RuntimeError as exc:  # the folder is locked by another process
            raise StoreError(f"local-mode store {path} is in use by another process") from exc
        return cls(client, f"local-mode store {path}", layout)

    # --- management -----------------------------------------------------------------------

    def ensure_collection(self, name: str, spec: dict, bulk: bool = False) -> None:
        with self._errors():
            if self.client.collection_exists(name):
                existing = self.collection_info(name)
                check_same_vectors(name, existing, spec)
                self._add_fields(name, existing["metadata"], spec)
                return
            indexes = payload_indexes(spec)
            self.client.create_collection(
                name,
                **self.layout.create_args(spec["dim"]),
                hnsw_config=models.HnswConfigDiff(m=0) if bulk else None,
                metadata=spec | {"created_at": time.time(), "layout": self.layout.record()},
            )
            with warnings.catch_warnings():  # local mode ignores them; a server uses them
                warnings.simplefilter("ignore", UserWarning)
                for field, kind in indexes.items():  # before the points: Qdrant's advice
                    self.client.create_payload_index(name, field, models.PayloadSchemaType(kind))
            log.info(
                "created collection %s (%d-d cosine) in %s", name, spec["dim"], self.description
            )

    def _add_fields(self, name: str, recorded: dict, spec: dict) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for field, kind in added_indexes(recorded, spec).items():
                self.client.create_payload_index(name, field, models.PayloadSchemaType(kind))
        if update := schema_update(recorded, spec):
            self.client.update_collection(name, metadata=update)

    def start_index(self, name: str, m: int = 16) -> None:
        with self._errors():
            self.client.update_collection(name, hnsw_config=models.HnswConfigDiff(m=m))

    def index_ready(self, name: str) -> bool:
        with self._errors():
            status = self.client.get_collection(name).status
            if status == models.CollectionStatus.RED:
                raise StoreError(f"Qdrant failed to optimise {name!r} (status red)")
            if status == models.CollectionStatus.GREY:  # optimisers wait for an update
                self.client.update_collection(name, optimizers_config=models.OptimizersConfigDiff())
        return status == models.CollectionStatus.GREEN

    def set_metadata(self, name: str, metadata: dict) -> None:
        with self._errors():
            self.client.update_collection(name, metadata=metadata)

    def delete_collection(self, name: str) -> None:
        with self._errors():
            self.client.delete_collection(name)

    def switch_alias(self, alias: str, collection: str) -> None:
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

    # --- writes ---------------------------------------------------------------------------

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        check_finite(vectors)
        with self._errors():
            self.client.upsert(
                name,
                points=models.Batch(
                    ids=list(ids), vectors=vectors.tolist(), payloads=list(payloads)
                ),
                wait=True,
            )

    # --- reads ----------------------------------------------------------------------------

    def collections(self) -> list[str]:
        with self._errors():
            return sorted(c.name for c in self.client.get_collections().collections)

    def aliases(self) -> dict[str, str]:
        with self._errors():
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def collection_info(self, name: str) -> dict:
        with self._errors():
            self._must_exist(name)
            info = self.client.get_collection(name)
            params = info.config.params.vectors
            count = self.client.count(name, exact=True).count
            return {
                "name": name,
                "dim": params.size,
                "distance": params.distance.value,
                "points": count,
                # The server's own optimiser indexes; local mode never does (it scans).
                "indexed_points": min(count, info.indexed_vectors_count or 0),
                "unindexed_points": max(0, count - (info.indexed_vectors_count or 0)),
                "metadata": info.config.metadata or {},
                # The indexes the server holds (local mode holds none: it scans).
                "payload_indexes": {
                    field: index.data_type.value for field, index in info.payload_schema.items()
                },
            }

    def metadata(self, name: str) -> dict:
        with self._errors():
            self._must_exist(name)
            return self.client.get_collection(name).config.metadata or {}

    def search(self, name: str, request: SearchRequest) -> list[Hit]:
        with self._errors():
            response = self.client.query_points(
                name, query=request.vector, **self._options(request)
            )
        return [to_hit(p) for p in response.points]

    def search_batch(self, name: str, requests: list[SearchRequest]) -> list[list[Hit]]:
        with self._errors():
            batch = [
                models.QueryRequest(
                    query=r.vector,
                    filter=parse_filter(r.filter),
                    limit=r.limit,
                    score_threshold=r.score_threshold,
                    with_payload=parse_payload_selector(r.with_payload),
                    with_vector=r.with_vectors,
                    params=self.layout.search_params(r.hnsw_ef),
                )
                for r in requests
            ]
            responses = self.client.query_batch_points(name, requests=batch)
        return [[to_hit(p) for p in r.points] for r in responses]

    def neighbours(self, name: str, requests: list[NeighbourRequest]) -> list[list[Hit]]:
        return neighbours(self, name, requests)

    def groups(
        self, name: str, request: SearchRequest, group_by: str, group_size: int = 1
    ) -> list[dict]:
        with self._errors():
            result = self.client.query_points_groups(
                name,
                group_by=group_by,
                query=request.vector,
                group_size=group_size,
                **self._options(request),
            )
        return [{"group": g.id, "hits": [to_hit(p) for p in g.hits]} for g in result.groups]

    def recommend(self, name: str, request: RecommendRequest) -> list[Hit]:
        with self._errors():
            examples = models.RecommendInput(positive=request.positive, negative=request.negative)
            response = self.client.query_points(
                name, query=models.RecommendQuery(recommend=examples), **self._options(request)
            )
        return [to_hit(p) for p in response.points]

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        with self._errors():
            points = self.client.retrieve(name, ids=list(ids), with_vectors=with_vectors)
        return [to_hit(p) for p in points]

    def count(self, name: str, filter: dict | None = None) -> int:
        with self._errors():
            return self.client.count(name, count_filter=parse_filter(filter), exact=True).count

    def facet(
        self, name: str, key: str, filter: dict | None = None, limit: int = 10_000
    ) -> list[dict]:
        with self._errors():
            hits = self.client.facet(
                name, key, facet_filter=parse_filter(filter), limit=limit, exact=True
            ).hits
        ordered = sorted(hits, key=lambda hit: (-hit.count, str(hit.value)))
        return [{"value": hit.value, "count": hit.count} for hit in ordered]

    def value_range(self, name: str, key: str, filter: dict | None = None) -> list[float] | None:
        ends = []  # the first point in each order
        for direction in (models.Direction.ASC, models.Direction.DESC):
            with self._errors():
                points, _ = self.client.scroll(
                    name,
                    scroll_filter=parse_filter(filter),
                    limit=1,
                    order_by=models.OrderBy(key=key, direction=direction),
                )
            end = range_end(points, key, lowest=direction == models.Direction.ASC)
            if end is None:
                return None
            ends.append(end)
        return ends

    def scroll(
        self, name: str, filter: dict | None = None, limit: int = 10, offset: str | None = None
    ) -> dict:
        with self._errors():
            points, next_offset = self.client.scroll(
                name, scroll_filter=parse_filter(filter), limit=limit, offset=offset
            )
        return {
            "points": [to_hit(p) for p in points],
            "next_offset": None if next_offset is None else str(next_offset),
        }

    def ping(self) -> None:
        with self._errors():
            self.client.get_collections()

    def close(self) -> None:
        self.client.close()

    # --- helpers --------------------------------------------------------------------------

    def _options(self, options: HitOptions) -> dict:
        """A query's options as `query_points` and `query_points_groups` take them."""
        return {
            "query_filter": parse_filter(options.filter),
            "limit": options.limit,
            "score_threshold": options.score_threshold,
            "with_payload": parse_payload_selector(options.with_payload),
            "with_vectors": options.with_vectors,
            "search_params": self.layout.search_params(options.hnsw_ef),
        }

    def _must_exist(self, name: str) -> None:
        if not self.client.collection_exists(name) and name not in self.aliases():
            raise StoreError(f"collection {name!r} does not exist")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn qdrant-client's, httpx's and gRPC's exceptions into one readable StoreError."""
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
        except grpc.RpcError as exc:
            raise _grpc_error(exc, where) from exc
        except (ResponseHandlingException, OSError, TimeoutError) as exc:
            message = f"cannot reach Qdrant at {where}: {first_line(exc)}"
            raise StoreError(message, transient=True) from exc
        except (ValueError, ValidationError) as exc:
            raise StoreError(f"Qdrant ({where}) refused the request: {first_line(exc)}") from exc


def _grpc_error(exc: grpc.RpcError, where: str) -> StoreError:
    """The call's status code decides: an outage (worth retrying) or a refusal."""
    call = exc if isinstance(exc, grpc.Call) else None  # what qdrant-client's calls raise
    code = call.code() if call else grpc.StatusCode.UNKNOWN
    detail = (call.details() or "")[:300] if call else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return StoreError(f"cannot reach Qdrant at {where} (gRPC {code.name}): {detail}", True)
    message = f"Qdrant ({where}) answered gRPC {code.name}: {detail}"
    return StoreError(message, transient=code in TRANSIENT_GRPC)
