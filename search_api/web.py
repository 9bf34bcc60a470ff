"""The search page at `/`: browse a collection, query by file, by case or by examples, filters
from the schema, results with their pictures, a viewer (search_api.viewer), the closest case
per label, the embedding map, DICOM's patients and series, the collections and the jobs.

Server-rendered (Jinja2) with static ES modules (static/js/); every asset ships in the
package. When MEDINDEX_API_KEY is set, every route but /healthz, /login, /logout and /static
needs it: the header `X-API-Key`, or the cookie of a session the login form opened (kept in
Redis: it expires, and sign-out ends it; HttpOnly, SameSite=Strict, Secure beyond localhost;
sign-in attempts are bounded per client). Pictures are made only from a point's own recorded
source (never a path from a request), with validators: a point's picture does not change
within a collection version.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import redis
from fastapi import (
    APIRouter,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from pydantic import BaseModel

from pipeline.errors import MedindexError
from pipeline.images import ImageError
from pipeline.picture import picture_of
from pipeline.projection import (
    MapVersion,
    cached_map,
    claim_map,
    map_due,
    map_state,
)
from pipeline.settings import get_settings
from pipeline.sources import SourceError
from pipeline.sources.window import Window
from search_api import audit, jobs, viewer
from search_api.collections import collection_facts, short_path
from search_api.deps import (
    broker,
    client,
    made_of,
    point_of,
    read_upload,
    recorded_source,
    unavailable,
)
from search_api.facets import collection_view, version_of

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = lambda t: t and time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
templates.env.filters["short_path"] = short_path
router = APIRouter()

COOKIE = "medindex_session"
SESSION_KEY = "medindex:session:"  # + the hash of a session's token -> the key's mark
LOGIN_KEY = "medindex:login:"  # + a client's address -> its sign-in attempts this minute
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
KEY_HEADER = "X-API-Key"
OPEN_PATHS = ("/healthz", "/login", "/logout", "/static/")  # sign-out: even an expired one
THUMB_PX = 256
MATCHING_PAGE = 1000  # points per scroll when the map's points are matched against a filter
# Scripts and styles from this origin only (no inline script), pictures also as data: URLs
# (the query picture) and blob: (a dropped file's preview); never framed, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
Size = Literal["thumb", "full"]


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for routes in (router, viewer.router, jobs.router, audit.router):
        app.include_router(routes)
    app.middleware("http")(_guard)


# --- the key and the page's sessions ------------------------------------------------------


def _authorised(request: Request, key: str) -> bool:
    given = request.headers.get(KEY_HEADER)
    if given is not None:
        return hmac.compare_digest(given.encode(), key.encode())
    token = request.cookies.get(COOKIE)
    if not token:
        return False
    opened_with = broker().get(_session_key(token))
    return opened_with is not None and hmac.compare_digest(opened_with, _key_mark(key))


async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await _allowed(request, call_next)
    if not request.url.path.startswith(("/docs", "/redoc")):  # their pages run inline scripts
        response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def _allowed(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    key = get_settings().api_key
    path = request.url.path
    if not key or path.startswith(OPEN_PATHS):
        return await call_next(request)
    try:  # a session is looked up in Redis: off the event loop
        allowed = await run_in_threadpool(_authorised, request, key.get_secret_value())
    except (MedindexError, redis.RedisError) as exc:  # the app's handlers do not reach here
        return unavailable(request, exc)
    if allowed:
        return await call_next(request)
    if request.method == "GET" and path == "/":
        return RedirectResponse("/login", status_code=303)
    return JSONResponse({"detail": f"missing or wrong API key (header {KEY_HEADER})"}, 401)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, api_key: Annotated[str, Form()]) -> Response:
    settings = get_settings()
    if settings.api_key is None:
        return RedirectResponse("/", status_code=303)
    key = settings.api_key.get_secret_value()
    if wait := _login_wait(request, settings.login_attempts_per_minute):  # before the key
        error = f"too many sign-in attempts: try again in {wait} s"
        return _login_page(request, error, 429, {"Retry-After": str(wait)})
    if not hmac.compare_digest(api_key.encode(), key.encode()):
        return _login_page(request, "wrong API key", 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        _open_session(key, settings.session_ttl_s),
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Ends the session itself, not only the browser's copy of its cookie."""
    if token := request.cookies.get(COOKIE):
        broker().delete(_session_key(token))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=_secure(request))
    return response


def _login_page(
    request: Request, error: str, status: int, headers: dict[str, str] | None = None
) -> Response:
    return templates.TemplateResponse(
        request, "login.html", {"error": error}, status_code=status, headers=headers
    )


def _key_mark(key: str) -> str:
    """What a session records of the key it was opened with: a new key ends every session."""
    return hmac.new(key.encode(), b"medindex search page", hashlib.sha256).hexdigest()


def _session_key(token: str) -> str:
    """The Redis key of a session: its token's hash (Redis never holds a usable cookie)."""
    return SESSION_KEY + hashlib.sha256(token.encode()).hexdigest()


def _open_session(key: str, ttl_s: int) -> str:
    """A new session, kept in Redis for `ttl_s` seconds from now: its cookie's value."""
    token = secrets.token_urlsafe(32)
    broker().set(_session_key(token), _key_mark(key), ex=ttl_s)
    return token


def _login_wait(request: Request, per_minute: int) -> int:
    """Seconds until this client may try to sign in again (0: now), counting this attempt:
    at most `per_minute` attempts per client address in each minute."""
    counter = LOGIN_KEY + (request.client.host if request.client else "unknown")
    with broker().pipeline() as pipe:
        pipe.set(counter, 0, ex=60, nx=True)  # the minute starts at its first attempt
        pipe.incr(counter)
        pipe.ttl(counter)
        _, attempts, left = pipe.execute()
    return 0 if attempts <= per_minute else max(int(left), 1)


def _secure(request: Request) -> bool:
    """The cookie goes over HTTPS only, except to a page asked for on localhost (browsers and
    API clients there speak plain HTTP) or where MEDINDEX_SESSION_COOKIE_SECURE is false."""
    return get_settings().session_cookie_secure and request.url.hostname not in LOCAL_HOSTS


# --- the page ----------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def page(request: Request, collection: str | None = None) -> Response:
    """The page of one collection; one not in the store is a page saying so (404)."""
    facts = collection_facts(client().store)
    aliases = sorted({f.row.alias for f in facts if f.row.alias})
    names = [*aliases, *(f.row.collection for f in facts)]
    chosen = collection or _default(names)
    missing = chosen is not None and chosen not in names
    view = collection_view(chosen) if chosen and not missing else None
    shown = next((f for f in facts if view and f.row.collection == view.version), None)
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "facts": facts,
            "names": names,
            "chosen": chosen,
            "missing": missing,
            "view": view,
            "shown": shown,
            "limit": 12,
            "api_key_set": get_settings().api_key is not None,
        },
        status_code=404 if missing else 200,
    )


def _default(names: list[str]) -> str | None:
    configured = get_settings().collection
    return configured if configured in names else next(iter(names), None)


@router.get("/collections/{collection}/points/{point}")
def point(collection: str, point: str) -> dict:
    return point_of(version_of(collection), point)


@router.get("/collections/{collection}/values/{field}")
def field_values(
    collection: str, field: str, text: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[dict]:
    """A keyword field's values holding `text`, with their counts (the page's type-ahead)."""
    found = collection_view(collection).field(field)
    if found is None or found.type != "keyword":
        raise HTTPException(404, f"no keyword field {field!r} in {collection}")
    return [{"value": value, "count": n} for value, n in found.matching(text, limit)]


@router.post("/collections/{collection}/embed")
def embed(collection: str, image: Annotated[UploadFile, File()]) -> dict:
    """An uploaded query file -> its vector, and the picture the model saw (for the page to
    show beside the results, and to query again with, filters changed, without a re-upload)."""
    picture, vector = client().embed_query_picture(collection, read_upload(image))
    thumb = base64.b64encode(_encode(picture, "thumb")).decode()
    return {"vector": vector, "picture": f"data:image/jpeg;base64,{thumb}"}


@router.get("/collections/{collection}/points/{point}/picture")
def picture(
    collection: str, point: str, request: Request, size: Size = "thumb", window: str | None = None
) -> Response:
    """The embedded picture; with `window=CENTER/WIDTH` (DICOM, NIfTI) the same slice rendered
    from the original data through that window instead (search_api.viewer)."""
    chosen = viewer.parse_window(window) if window else None
    version = version_of(collection)
    made = made_of(version)  # a version's name made again: its creation time says which
    asked = f"{version}\0{made}\0{point}\0{size}\0{chosen}"
    digest = hashlib.sha256(asked.encode()).hexdigest()
    etag = f'"{digest[:32]}"'
    # Named by its version (as the page names it), a picture never changes; named by an
    # alias, it may once the alias moves: asked again each time, answered 304 while the same.
    cache = "private, max-age=86400" if version == collection else "private, no-cache"
    headers = {"ETag": etag, "Cache-Control": cache}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = "image/jpeg" if size == "thumb" else "image/png"
    content = _picture_bytes(version, made, point, size, chosen)
    return Response(content, media_type=media, headers=headers)


@lru_cache(maxsize=512)  # a results page's thumbnails, for every browser that asks
def _picture_bytes(
    version: str, made: float | None, point: str, size: Size, window: Window | None
) -> bytes:
    if window is not None:
        return _encode(viewer.windowed(version, made, point, window), size)
    source = recorded_source(version, point)
    try:
        return _encode(picture_of(source, get_settings()), size)
    except (ImageError, SourceError) as exc:
        raise HTTPException(404, f"picture of point {point}: {exc}") from exc


def _encode(picture: Image.Image, size: Size) -> bytes:
    out = io.BytesIO()
    if size == "thumb":
        picture = picture.copy()
        picture.thumbnail((THUMB_PX, THUMB_PX))
        picture.save(out, format="JPEG", quality=85)
    else:
        picture.save(out, format="PNG")
    return out.getvalue()


# --- the embedding map -------------------------------------------------------------------


@router.get("/collections/{collection}/map")
def embedding_map(collection: str) -> JSONResponse:
    """The version's map when made (200; while a newer one is made, the one kept); otherwise
    it is asked for once and the page polls (202)."""
    name = version_of(collection)
    info = client().store.collection_info(name)
    version = MapVersion(name, info["metadata"].get("created_at"))
    redis = broker()
    kept = cached_map(redis, version)
    due = map_due(kept, info["points"], get_settings().map_refresh_s)
    if due and claim_map(redis, version):
        from pipeline.celery_app import senders  # celery: slow to import

        senders.send_map_request(version.collection, version.made)
    if kept is not None:
        return JSONResponse(kept | {"state": "ready"})
    return JSONResponse({"state": map_state(redis, version) or "computing"}, 202)


class FilterBody(BaseModel):
    filter: dict | None = None


@router.post("/collections/{collection}/map/matching")
def map_matching(collection: str, body: FilterBody) -> dict:
    """Which of the map's points a filter keeps (the page dims the others)."""
    name = version_of(collection)
    kept = cached_map(broker(), MapVersion(name, made_of(name)))
    if kept is None:
        raise HTTPException(409, f"no map of {name} yet")
    ids = kept["ids"]
    return {"ids": _matching(name, body.filter, uuid.UUID(ids[-1]).int) if ids else []}


def _matching(collection: str, filter: dict | None, last: int) -> list[str]:
    """The ids a filter keeps, up to the map's last: its sample is the first points in id
    order (pipeline.catalog.first_points), and scrolling goes in id order too."""
    found: list[str] = []
    offset = None
    while True:
        page = client().scroll(collection, filter, MATCHING_PAGE, offset)
        found += [hit["id"] for hit in page["points"] if uuid.UUID(hit["id"]).int <= last]
        offset = page["next_offset"]
        if offset is None or uuid.UUID(offset).int > last:
            return found
