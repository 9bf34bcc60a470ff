"""What the store's calls take and give: hits, and the typed requests of the nearest-vector
queries (plain data, so that they cross the broker as JSON and arrive typed)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Hit = dict[str, Any]  # {"id", "score", "payload"[, "vector"]}


class HitOptions(BaseModel):
    """Which points a query may return, how many, and what each hit carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filter: dict | None = None  # Qdrant's JSON filter (see pipeline.store.filters)
    limit: int = 10
    score_threshold: float | None = None
    # true, false, [fields], {"include": [...]} or {"exclude": [...]}
    with_payload: bool | list | dict = True
    with_vectors: bool = False
    # HNSW's beam (`hnsw_ef`); None: the store's, SEARCH_HNSW_EF. Narrower is faster and may
    # miss a near point: for bulk questions such as the audit's, not for a user's search.
    hnsw_ef: int | None = Field(None, ge=1)


class SearchRequest(HitOptions):
    """The points nearest to `vector` (for `groups`: `limit` groups)."""

    vector: list[float]


def _canonical_id(value: str) -> str:
    """A point id as the engines give it back: an unsigned integer, or a UUID's canonical text."""
    return value if value.isdigit() else str(uuid.UUID(value))


class NeighbourRequest(HitOptions):
    """The points nearest to the stored point `id` (its own vector, read by the store: none
    travels), the point itself left out of them."""

    id: Annotated[str, AfterValidator(_canonical_id)]


class RecommendRequest(HitOptions):
    """The points like the `positive` examples and unlike the `negative` ones (the examples
    themselves excluded)."""

    positive: list[str]
    negative: list[str] = []
