"""What the store's calls take and give: hits, and the typed requests of the nearest-vector
queries (plain data, so that they cross the broker as JSON and arrive typed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

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


class SearchRequest(HitOptions):
    """The points nearest to `vector` (for `groups`: `limit` groups)."""

    vector: list[float]


class RecommendRequest(HitOptions):
    """The points like the `positive` examples and unlike the `negative` ones (the examples
    themselves excluded)."""

    positive: list[str]
    negative: list[str] = []
