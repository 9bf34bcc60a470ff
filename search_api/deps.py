"""What the JSON API (search_api.http) and the page (search_api.web) share: one search client
per process, a point and its recorded source, the bounded reading of an uploaded query file,
and the answer to an outage."""

from __future__ import annotations

import logging
from functools import cache

import redis
from fastapi import HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from pipeline.errors import mask_url
from pipeline.progress import connect_redis
from pipeline.settings import get_settings
from search_api.client import SearchClient

log = logging.getLogger(__name__)
UNAVAILABLE = "search is unavailable for now (its broker or store is down); try again later"

# Counted on the bytes received (a chunked body declares no length), with room for the
# form's other fields: an oversized upload is refused before it is spooled.
MAX_BODY_BYTES = get_settings().max_image_bytes + 64 * 1024


@cache
def client() -> SearchClient:
    return SearchClient(get_settings())


@cache
def broker() -> redis.Redis:
    """Redis: the page's sessions, the embedding maps, the jobs' state."""
    return connect_redis(get_settings().broker_url)


def made_of(version: str) -> float | None:
    """When a collection version was made: a name made again (deleted, ingested anew) is
    another version, whose pictures and maps are not the old one's."""
    return client().store.metadata(version).get("created_at")


def point_of(version: str, point: str) -> dict:
    found = client().store.retrieve(version, [point])
    if not found:
        raise HTTPException(404, f"no point {point} in {version}")
    return found[0]


def recorded_source(version: str, point: str) -> dict:
    """A point's `source` reference, only inside the collection's own dataset: a payload is
    data, not a licence to read any path."""
    source = point_of(version, point)["payload"].get("source")
    recorded = client().store.metadata(version).get("dataset")
    if not isinstance(source, dict) or source.get("dataset") != recorded:
        raise HTTPException(404, f"point {point} has no picture recorded in {version}")
    return source


def read_upload(image: UploadFile) -> bytes:
    """An uploaded query file's bytes; over MEDINDEX_MAX_IMAGE_BYTES is a 413."""
    max_bytes = get_settings().max_image_bytes
    data = image.file.read(max_bytes + 1)  # spooled already, at most MAX_BODY_BYTES
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload larger than {max_bytes} bytes")
    return data


def unavailable(request: Request, exc: Exception) -> JSONResponse:
    """An outage is not the caller's mistake, and its details (addresses, the store's own
    answer) are for the operator: the server log has them, the caller a generic reason."""
    log.error("%s %s: %s", request.method, request.url.path, mask_url(str(exc)))
    return JSONResponse({"detail": UNAVAILABLE}, status_code=503)
