"""Points into either engine and hits out of it."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.store.errors import StoreError
from pipeline.store.types import Hit


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
