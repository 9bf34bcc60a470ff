"""What the JSON API (search_api.http) and the page (search_api.web) share: one search client
per process, and the bounded reading of an uploaded query file."""

from __future__ import annotations

from functools import cache

from fastapi import HTTPException, UploadFile

from pipeline.settings import get_settings
from search_api.client import SearchClient

# Counted on the bytes received (a chunked body declares no length), with room for the
# form's other fields: an oversized upload is refused before it is spooled.
MAX_BODY_BYTES = get_settings().max_image_bytes + 64 * 1024


@cache
def client() -> SearchClient:
    return SearchClient(get_settings())


def read_upload(image: UploadFile) -> bytes:
    """An uploaded query file's bytes; over MEDINDEX_MAX_IMAGE_BYTES is a 413."""
    max_bytes = get_settings().max_image_bytes
    data = image.file.read(max_bytes + 1)  # spooled already, at most MAX_BODY_BYTES
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload larger than {max_bytes} bytes")
    return data
