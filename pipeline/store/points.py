"""Points into either engine and hits out of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.store.errors import StoreError
from pipeline.store.types import Hit, NeighbourRequest, SearchRequest

if TYPE_CHECKING:
    from pipeline.store.base import Reader


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


def range_end(points: list[Any], key: str, lowest: bool) -> float | None:
    """The value at one end of a field, from a scroll ordered by it (limit 1): a list's own end
    on that side; None when no point carries the field."""
    if not points:
        return None
    value = points[0].payload[key]
    pick = min if lowest else max
    return pick(value) if isinstance(value, list) else value


def every_point(store: Reader, name: str, page: int = 1000) -> Iterator[Hit]:
    """Every point of a collection with its payload, in id order, read a page at a time."""
    offset = None
    while True:
        answer = store.scroll(name, limit=page, offset=offset)
        yield from answer["points"]
        if (offset := answer["next_offset"]) is None:
            return


def neighbours(store: Reader, name: str, requests: list[NeighbourRequest]) -> list[list[Hit]]:
    """`Reader.neighbours` in the store's own process: the points' vectors read in one call,
    searched in one batch. The point is left out by asking one hit more and dropping it (a
    `has_id` filter would be checked point by point: twice the search's time in Edge)."""
    wanted = list(dict.fromkeys(r.id for r in requests))
    vectors = {hit["id"]: hit["vector"] for hit in store.retrieve(name, wanted, True)}
    found = [r for r in requests if r.id in vectors]
    asked = [  # validated already: no need to check the vector's floats again
        SearchRequest.model_construct(
            **r.model_dump(exclude={"id"}) | {"limit": r.limit + 1}, vector=vectors[r.id]
        )
        for r in found
    ]
    answers = iter(store.search_batch(name, asked) if asked else [])
    return [
        [hit for hit in next(answers) if hit["id"] != r.id][: r.limit] if r.id in vectors else []
        for r in requests
    ]
