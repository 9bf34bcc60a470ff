"""The store as a client sees it.

A Qdrant server is opened directly. An embedded store allows one process per folder, so the
store worker owns it and everyone else (producer, search) calls it through the broker.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout

from pipeline.celery_app import STORE_QUEUE, app
from pipeline.progress import connect_redis
from pipeline.settings import Settings
from pipeline.store import Store, StoreError, connect

STORE_CALL_TASK = "medindex.store_call"
# Reads, and creating a collection: never raw writes, which go through the upsert queue.
REMOTE_CALLS = frozenset(
    {
        "collection_info",
        "count",
        "ensure_collection",
        "groups",
        "ping",
        "recommend",
        "retrieve",
        "scroll",
        "search",
        "search_batch",
    }
)


class RemoteStore:
    """Same methods as `Store` (those in REMOTE_CALLS), run by the store worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.description = f"embedded store via the store worker at {settings.broker_url}"
        connect_redis(settings.broker_url)  # fail early, on one line, if the broker is down

    def __getattr__(self, method: str) -> Any:
        if method not in REMOTE_CALLS:
            raise AttributeError(method)
        return partial(self._call, method)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        timeout = self.settings.store_call_timeout_s
        result = app.send_task(
            STORE_CALL_TASK,
            kwargs={"method": method, "args": list(args), "kwargs": kwargs},
            queue=STORE_QUEUE,
        )
        try:
            answer = result.get(timeout=timeout, propagate=False)
        except CeleryTimeout as exc:
            raise StoreError(
                f"no store worker answered within {timeout:g}s: is `medindex up` running?"
            ) from exc
        finally:
            result.forget()
        if not isinstance(answer, dict) or "error" in answer:
            raise StoreError(answer.get("error") if isinstance(answer, dict) else str(answer))
        return answer["value"]

    def close(self) -> None:
        """Nothing to release: the store worker keeps the store open."""


def open_store(settings: Settings) -> Store | RemoteStore:
    return connect(settings) if settings.qdrant_url else RemoteStore(settings)


def answer_store_call(store: Store, method: str, args: list, kwargs: dict) -> dict:
    """Run one remote call on the store this process owns; errors travel back as text."""
    if method not in REMOTE_CALLS:
        return {"error": f"store call {method!r} is not allowed"}
    try:
        return {"value": getattr(store, method)(*args, **kwargs)}
    except StoreError as exc:
        return {"error": str(exc)}
