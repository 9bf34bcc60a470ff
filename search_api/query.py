"""What a search asks (`Query`), its refusals (`QueryError`) and the reading of a query file:
light to import, so that `medindex search` refuses a bad query file before loading the
client (qdrant-client) or a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import MedindexError


class QueryError(MedindexError):
    """A query the caller got wrong; the message says how."""


@dataclass
class Query:
    """One search: exactly one of image, point_id, vector."""

    image: Path | bytes | None = None
    point_id: str | None = None
    vector: list[float] | None = None
    filter: dict | None = None
    limit: int = 10
    score_threshold: float | None = None
    with_payload: bool | list | dict = True


def read_query_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise QueryError(f"query image {path} is {size} bytes (limit {max_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        raise QueryError(f"cannot read query image {path}: {exc.strerror}") from exc
    if not data:
        raise QueryError(f"query image {path} is empty (0 bytes)")
    return data
