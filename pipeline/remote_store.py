"""The store as a client sees it.

A Qdrant server is opened directly. An embedded store allows one process per folder, so the
store worker owns it and everyone else (producer, search) calls it through the broker.
"""

from __future__ import annotations

import json
import uuid
from functools import partial
from typing import Any

import redis

from pipeline.celery_app import STORE_QUEUE, app
from pipeline.errors import first_line
from pipeline.progress import connect_redis
from pipeline.settings import Settings
from pipeline.store import Store, StoreError, connect

STORE_CALL_TASK = "medindex.store_call"
REPLY_PREFIX = "medindex:reply:"
# Reads and collection management: never point writes, which go through the upsert queue.
REMOTE_CALLS = frozenset(
    {
        "aliases",
        "collection_info",
        "collections",
        "count",
        "delete_collection",
        "ensure_collection",
        "finish_bulk",
        "metadata",
        "groups",
        "ping",
        "recommend",
        "retrieve",
        "scroll",
        "search",
        "search_batch",
        "set_metadata",
        "switch_alias",
    }
)


class RemoteStore:
    """Same methods as `Store` (those in REMOTE_CALLS), run by the store worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.description = f"embedded store via the store worker at {settings.broker_url}"
        self.redis = connect_redis(settings.broker_url)  # fails early, on one line, if down

    def __getattr__(self, method: str) -> Any:
        if method not in REMOTE_CALLS:
            raise AttributeError(method)
        return partial(self._call, method)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # The answer comes back on a reply list of its own: no result backend to keep.
        timeout = self.settings.store_call_timeout_s
        reply_to = REPLY_PREFIX + uuid.uuid4().hex
        call = {"method": method, "args": list(args), "kwargs": kwargs, "reply_to": reply_to}
        app.send_task(STORE_CALL_TASK, kwargs=call, queue=STORE_QUEUE, expires=timeout)
        answer = self.redis.blpop([reply_to], timeout=timeout)
        if answer is None:
            raise StoreError(
                f"no store worker answered within {timeout:g}s: "
                "is `medindex up` running (or the store worker busy)?"
            )
        result = json.loads(answer[1])
        if "error" in result:
            raise StoreError(result["error"])
        return result["value"]

    def close(self) -> None:
        """Nothing to release: the store worker keeps the store open."""


AnyStore = Store | RemoteStore


def open_store(settings: Settings) -> AnyStore:
    return connect(settings) if settings.qdrant_url else RemoteStore(settings)


def answer_store_call(
    store: Store, client: redis.Redis, reply_to: str, method: str, args: list, kwargs: dict
) -> None:
    """Run one remote call on the store this process owns; errors travel back as text."""
    if method not in REMOTE_CALLS:
        answer = {"error": f"store call {method!r} is not allowed"}
    else:
        try:
            answer = {"value": getattr(store, method)(*args, **kwargs)}
        except StoreError as exc:
            answer = {"error": str(exc)}
        except Exception as exc:  # a bad argument must still get an answer, not a timeout
            answer = {"error": f"store call {method} failed: {first_line(exc)}"}
    pipe = client.pipeline()
    pipe.rpush(reply_to, json.dumps(answer))
    pipe.expire(reply_to, 300)  # a caller that gave up leaves nothing behind for long
    pipe.execute()
