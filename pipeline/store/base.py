"""The store's interface, as protocols: `Reader` (the queries: all a search process gets),
`Manager` (a producer's collection management), `PointWriter` (the upsert task's one call).

It imports only types. The backends (`pipeline.store.edge`, `pipeline.store.server`) implement
`Store`; the broker proxy (`pipeline.store.remote`) makes its methods from `Reader` and
`Manager` and checks each call's arguments against their type hints. A new query is one method
here and one in each backend.

`name` in every read may be a collection or an alias.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Protocol

from numpy import ndarray

from pipeline.store.types import Hit, NeighbourRequest, RecommendRequest, SearchRequest


class Reader(Protocol):
    @abstractmethod
    def collections(self) -> list[str]: ...

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """alias -> collection."""

    @abstractmethod
    def collection_info(self, name: str) -> dict:
        """{"name", "dim", "distance", "points", "indexed_points", "unindexed_points",
        "metadata", "payload_indexes"}: unindexed points are outside the HNSW index, searched
        exactly (an embedded collection builds them in past `index_after_points`)."""

    @abstractmethod
    def metadata(self, name: str) -> dict:
        """What the collection records about its vectors (cheap: no count)."""

    @abstractmethod
    def search(self, name: str, request: SearchRequest) -> list[Hit]: ...

    @abstractmethod
    def search_batch(self, name: str, requests: list[SearchRequest]) -> list[list[Hit]]:
        """Many searches in one call, each with its own filter, limit and payload."""

    @abstractmethod
    def neighbours(self, name: str, requests: list[NeighbourRequest]) -> list[list[Hit]]:
        """Many searches from stored points (`search_batch` by point id): an audit's shard
        in one call. A point that does not exist has no neighbours ([])."""

    @abstractmethod
    def groups(
        self, name: str, request: SearchRequest, group_by: str, group_size: int = 1
    ) -> list[dict]:
        """The closest `group_size` points for each of `request.limit` values of `group_by`:
        [{"group", "hits"}], groups in the order of their best hit."""

    @abstractmethod
    def recommend(self, name: str, request: RecommendRequest) -> list[Hit]: ...

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]: ...

    @abstractmethod
    def count(self, name: str, filter: dict | None = None) -> int: ...

    @abstractmethod
    def facet(
        self, name: str, key: str, filter: dict | None = None, limit: int = 10_000
    ) -> list[dict]:
        """Up to `limit` values of the keyword field `key` (payload-indexed), each with the
        number of points holding it among those `filter` matches, most first, over the whole
        collection: [{"value", "count"}]. A point holding a list counts once for each value."""

    @abstractmethod
    def value_range(self, name: str, key: str, filter: dict | None = None) -> list[float] | None:
        """[lowest, highest] value of the numeric field `key` (payload-indexed) among the
        points `filter` matches; None when none holds one."""

    @abstractmethod
    def scroll(
        self, name: str, filter: dict | None = None, limit: int = 10, offset: str | None = None
    ) -> dict:
        """One page of points in id order; pass `next_offset` back for the next page."""

    @abstractmethod
    def ping(self) -> None: ...


class Manager(Protocol):
    """The producer's and reindex's calls, never a search process'."""

    @abstractmethod
    def ensure_collection(self, name: str, spec: dict, bulk: bool = False) -> None:
        """Create a cosine collection recording `spec` (what makes its vectors: model,
        pooling, dim, ...) with payload indexes; refuse to reuse one made another way.

        `bulk`: HNSW construction deferred until the index is built (`finish_bulk`), Qdrant's
        advice for a large first load.
        """

    @abstractmethod
    def start_index(self, name: str) -> None:
        """Start building the HNSW index in the background: deferred during a bulk load, or of
        the points written since the last build (an ingest's end). Returns at once; the
        collection serves searches and writes meanwhile."""

    @abstractmethod
    def index_ready(self, name: str) -> bool:
        """Whether the index `start_index` began is built; raises if building failed."""

    @abstractmethod
    def set_metadata(self, name: str, metadata: dict) -> None:
        """Merged into what the collection already records."""

    @abstractmethod
    def delete_collection(self, name: str) -> None: ...

    @abstractmethod
    def switch_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic operation."""


class PointWriter(Protocol):
    @abstractmethod
    def upsert(
        self, name: str, ids: Sequence[str], vectors: ndarray, payloads: Sequence[dict]
    ) -> None:
        """One write call; it returns once the points are applied and durable. A missing
        collection is a refusal: a writer never creates one."""


class Admin(Reader, Manager, Protocol):
    """What a producer holds: queries and management (its points go through the upsert
    queue)."""


class Store(Admin, PointWriter, Protocol):
    """A store opened directly (a server, or the embedded folder by its one owner)."""

    @abstractmethod
    def close(self) -> None: ...
