"""The HTTP face of search_api: the same queries as `SearchClient`, as JSON over HTTP, and
the search page at `/` (search_api.web), both behind MEDINDEX_API_KEY when it is set.

Run with `medindex serve`. Bounds: `limit` (search_api.client.MAX_LIMIT), upload size and
query image pixels (MEDINDEX_MAX_IMAGE_BYTES / MEDINDEX_QUERY_MAX_IMAGE_PIXELS). `/docs` and
`/redoc` work offline: their scripts are served from the package (fastapi-offline), not a CDN.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import redis
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from pipeline.errors import MedindexError, mask_url
from search_api import web
from search_api.client import MAX_LIMIT, Query
from search_api.deps import MAX_BODY_BYTES, client, read_upload, unavailable

app: FastAPI = FastAPIOffline(title="medindex search", version="1", max_body_size=MAX_BODY_BYTES)
web.install(app)


class SearchBody(BaseModel):
    """One query: exactly one of `point_id` and `vector` (images go to /search/image)."""

    point_id: str | None = None
    vector: list[float] | None = None
    filter: dict | None = None
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    score_threshold: float | None = None
    with_payload: bool | list[str] | dict = True

    def query(self) -> Query:
        return Query(**self.model_dump())


class BatchBody(BaseModel):
    queries: list[SearchBody] = Field(min_length=1, max_length=100)


class GroupsBody(SearchBody):
    group_by: str
    groups: int = Field(10, ge=1, le=MAX_LIMIT)
    per_group: int = Field(1, ge=1, le=100)


class ScrollBody(BaseModel):
    """One page of points in id order; `offset`: the `next_offset` of the page before."""

    filter: dict | None = None
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    offset: str | None = None


class RecommendBody(BaseModel):
    positive: list[str] = Field(min_length=1)
    negative: list[str] = []
    filter: dict | None = None
    limit: int = Field(10, ge=1, le=MAX_LIMIT)


@app.exception_handler(MedindexError)
async def _user_error(request: Request, exc: MedindexError) -> JSONResponse:
    if getattr(exc, "transient", False):
        return unavailable(request, exc)
    return JSONResponse({"detail": mask_url(str(exc))}, status_code=400)


@app.exception_handler(redis.RedisError)
async def _broker_lost(request: Request, exc: redis.RedisError) -> JSONResponse:
    return unavailable(request, exc)


@app.get("/healthz")
def healthz() -> dict:
    client().store.ping()
    return {"ok": True}


@app.post("/collections/{collection}/search")
def search(collection: str, body: SearchBody) -> list[dict]:
    return client().search(collection, body.query())


@app.post("/collections/{collection}/search/batch")
def search_batch(collection: str, body: BatchBody) -> list[list[dict]]:
    return client().search_batch(collection, [q.query() for q in body.queries])


@app.post("/collections/{collection}/search/image")
def search_image(
    collection: str,
    image: Annotated[UploadFile, File()],
    filter: Annotated[str | None, Form()] = None,
    limit: Annotated[int, Form(ge=1, le=MAX_LIMIT)] = 10,
    score_threshold: Annotated[float | None, Form()] = None,
) -> list[dict]:
    query = Query(
        image=read_upload(image), filter=_json(filter), limit=limit, score_threshold=score_threshold
    )
    return client().search(collection, query)


@app.post("/collections/{collection}/groups")
def groups(collection: str, body: GroupsBody) -> list[dict]:
    query = SearchBody(**body.model_dump(include=set(SearchBody.model_fields))).query()
    return client().groups(collection, query, body.group_by, body.groups, body.per_group)


@app.post("/collections/{collection}/recommend")
def recommend(collection: str, body: RecommendBody) -> list[dict]:
    return client().recommend(collection, body.positive, body.negative, body.filter, body.limit)


@app.post("/collections/{collection}/scroll")
def scroll(collection: str, body: ScrollBody) -> dict:
    return client().scroll(collection, body.filter, body.limit, body.offset)


@app.get("/collections/{collection}/count")
def count(collection: str, filter: str | None = None) -> dict:
    return {"count": client().count(collection, _json(filter))}


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"malformed filter: not JSON ({exc.msg})") from exc
