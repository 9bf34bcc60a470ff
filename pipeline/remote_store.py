"""The store as a client sees it.

A Qdrant server is opened directly. The embedded store (Qdrant Edge) allows one process per
folder, so the store worker owns it and everyone else calls it through the broker, on two
paths: queries (`RemoteReader`, all a search process gets) and the producer's management calls
(`RemoteStore`: create, index, relabel, delete, switch aliases), each a task of its own that
refuses the other's methods. Point writes never come this way: they go through the upsert queue.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from pipeline.celery_app import STORE_QUEUE, app
from pipeline.errors import first_line, mask_url
from pipeline.progress import connect_redis
from pipeline.settings import Settings
from pipeline.store import Hit, Store, StoreError, connect, wait_for_index

log = logging.getLogger(__name__)

QUERY_TASK = "medindex.store_query"
MANAGE_TASK = "medindex.store_manage"
REPLY_PREFIX = "medindex:reply:"
REPLY_KEY = re.compile(re.escape(REPLY_PREFIX) + "[0-9a-f]{32}")
REPLY_TTL_S = 300
QUERY_CALLS = frozenset(
    {
        "aliases",
        "collection_info",
        "collections",
        "count",
        "groups",
        "metadata",
        "ping",
        "recommend",
        "retrieve",
        "scroll",
        "search",
        "search_batch",
    }
)
MANAGE_CALLS = frozenset(
    {
        "delete_collection",
        "ensure_collection",
        "index_ready",
        "set_metadata",
        "start_index",
        "switch_alias",
    }
)
# The answer goes only to a fresh reply list (never one that exists: a queue, a job's state),
# and the expiry set is that list's own.
_REPLY = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('rpush', KEYS[1], ARGV[1])
redis.call('expire', KEYS[1], ARGV[2])
return 1
"""


class RemoteReader:
    """The query methods of `Store`, run by the store worker."""

    task = QUERY_TASK

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.description = f"embedded store via the store worker at {mask_url(settings.broker_url)}"
        self.redis = connect_redis(settings.broker_url)  # fails early, on one line, if down

    def collections(self) -> list[str]:
        return self._call(QUERY_TASK, "collections")

    def aliases(self) -> dict[str, str]:
        return self._call(QUERY_TASK, "aliases")

    def collection_info(self, name: str) -> dict:
        return self._call(QUERY_TASK, "collection_info", name)

    def metadata(self, name: str) -> dict:
        return self._call(QUERY_TASK, "metadata", name)

    def search(
        self,
        name: str,
        vector: Sequence[float],
        filter: dict | None = None,
        limit: int = 10,
        score_threshold: float | None = None,
        with_payload: bool | list | dict = True,
        with_vectors: bool = False,
    ) -> list[Hit]:
        return self._call(
            QUERY_TASK, "search", name, list(vector), filter, limit, score_threshold,
            with_payload, with_vectors,
        )  # fmt: skip

    def search_batch(self, name: str, queries: Sequence[dict]) -> list[list[Hit]]:
        return self._call(QUERY_TASK, "search_batch", name, list(queries))

    def groups(
        self,
        name: str,
        vector: Sequence[float],
        group_by: str,
        limit: int = 10,
        group_size: int = 1,
        filter: dict | None = None,
    ) -> list[dict]:
        return self._call(
            QUERY_TASK, "groups", name, list(vector), group_by, limit, group_size, filter
        )

    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        filter: dict | None = None,
        limit: int = 10,
    ) -> list[Hit]:
        return self._call(
            QUERY_TASK, "recommend", name, list(positive), list(negative), filter, limit
        )

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        return self._call(QUERY_TASK, "retrieve", name, list(ids), with_vectors)

    def count(self, name: str, filter: dict | None = None) -> int:
        return self._call(QUERY_TASK, "count", name, filter)

    def scroll(
        self, name: str, filter: dict | None = None, limit: int = 10, offset: str | None = None
    ) -> dict:
        return self._call(QUERY_TASK, "scroll", name, filter, limit, offset)

    def ping(self) -> None:
        self._call(QUERY_TASK, "ping")

    def close(self) -> None:
        """Nothing to release: the store worker keeps the store open."""

    def _call(self, task: str, method: str, *args: Any) -> Any:
        # The answer comes back on a reply list of its own: no result backend to keep.
        timeout = self.settings.store_call_timeout_s
        reply_to = REPLY_PREFIX + uuid.uuid4().hex
        # Past its deadline (wall-clock: the store worker may be another host) the call is
        # refused: it may have waited behind a long write, and its caller has given up.
        call = {
            "method": method,
            "args": list(args),
            "kwargs": {},
            "reply_to": reply_to,
            "deadline": time.time() + timeout,
        }
        app.send_task(
            task,
            kwargs=call,
            queue=STORE_QUEUE,
            expires=timeout,
            # What Flower shows and keeps: never filters, point ids or specs.
            argsrepr="()",
            kwargsrepr=f"{method}({args[0]!r})" if args else f"{method}()",
        )
        answer = self.redis.blpop([reply_to], timeout=timeout)
        if answer is None:
            raise StoreError(
                f"no store worker answered within {timeout:g}s: "
                "is `medindex up` running (or the store worker busy)?",
                transient=True,
            )
        result = json.loads(answer[1])
        if "error" in result:
            raise StoreError(result["error"], transient=result.get("transient", False))
        return result["value"]


class RemoteStore(RemoteReader):
    """Queries and the producer's management calls; never given to a search process."""

    def ensure_collection(self, name: str, spec: dict, bulk: bool = False) -> None:
        self._call(MANAGE_TASK, "ensure_collection", name, spec, bulk)

    def start_index(self, name: str) -> None:
        self._call(MANAGE_TASK, "start_index", name)

    def index_ready(self, name: str) -> bool:
        return self._call(MANAGE_TASK, "index_ready", name)

    def finish_bulk(self, name: str, timeout_s: float = 3600) -> None:
        wait_for_index(self, name, timeout_s)

    def set_metadata(self, name: str, metadata: dict) -> None:
        self._call(MANAGE_TASK, "set_metadata", name, metadata)

    def delete_collection(self, name: str) -> None:
        self._call(MANAGE_TASK, "delete_collection", name)

    def switch_alias(self, alias: str, collection: str) -> None:
        self._call(MANAGE_TASK, "switch_alias", alias, collection)


AnyStore = Store | RemoteStore
AnyReader = Store | RemoteReader


def open_store(settings: Settings) -> AnyStore:
    """Queries and management: for producers (ingest, reindex, rollback, collections)."""
    return connect(settings) if settings.store_backend == "server" else RemoteStore(settings)


def open_reader(settings: Settings) -> AnyReader:
    """Queries only: for search processes."""
    return connect(settings) if settings.store_backend == "server" else RemoteReader(settings)


def answer_store_call(
    store: Store,
    client: redis.Redis,
    allowed: frozenset[str],
    reply_to: str,
    method: str,
    args: list,
    kwargs: dict,
    deadline: float | None = None,
) -> None:
    """Run one remote call on the store this process owns; a refusal travels back as text
    with its kind (`transient`: an outage, worth retrying; otherwise the caller's mistake).
    A call past its `deadline` (`time.time()`) is refused: its caller stopped waiting."""
    if not isinstance(reply_to, str) or not REPLY_KEY.fullmatch(reply_to):
        log.error("store call %s refused: reply key %.80r is not a reply key", method, reply_to)
        return
    late = time.time() - deadline if deadline is not None else 0
    if method not in allowed:
        answer: dict = {"error": f"store call {method!r} is not allowed on this path"}
    elif late > 0:
        refusal = f"store call {method} refused: its caller gave up {late:.1f}s ago"
        log.warning("%s (the store worker was busy, or the clocks disagree)", refusal)
        answer = {"error": refusal, "transient": True}
    else:
        try:
            answer = {"value": getattr(store, method)(*args, **kwargs)}
        except StoreError as exc:
            answer = {"error": str(exc), "transient": exc.transient}
        except Exception as exc:  # a bad argument must still get an answer, not a timeout
            answer = {"error": f"store call {method} failed: {first_line(exc)}"}
    if not client.eval(_REPLY, 1, reply_to, json.dumps(answer), REPLY_TTL_S):
        log.error("store call %s: reply key %s exists already; no answer sent", method, reply_to)
