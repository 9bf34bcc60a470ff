"""The embedded store across the broker: the proxy a client holds, and the store worker's answer.

Qdrant Edge allows one process per folder, so the store worker owns it and everyone else calls
it through the broker, on two paths (`PATHS`): queries (`RemoteReader`: all a search process
gets), on a Redis list that a thread of the store worker serves beside its writes
(`serve_queries`), so that a search never waits behind a write call; and the producer's
management calls (`RemoteAdmin`: create, index, relabel, delete, switch aliases), a Celery task
run between writes. A path's calls are its protocol's methods: the proxy's
methods are made from them, and the store worker refuses any other call on that path and checks
each argument against the protocol's type hints, so a `SearchRequest` crosses as JSON and
arrives typed. Point writes never come this way: they go through the upsert queue.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from functools import cache, update_wrapper
from typing import Any, get_type_hints

import redis
from pydantic import BaseModel, ValidationError, create_model
from pydantic_core import to_jsonable_python

from pipeline.celery_app import senders
from pipeline.errors import first_line
from pipeline.messages import STORE_MANAGE_TASK, STORE_QUERY_LIST, send_store_query
from pipeline.progress import connect_redis
from pipeline.settings import Settings
from pipeline.store.base import Admin, Manager, Reader, Store
from pipeline.store.errors import StoreError

log = logging.getLogger(__name__)

PATHS: dict[str, type] = {STORE_QUERY_LIST: Reader, STORE_MANAGE_TASK: Manager}
REPLY_PREFIX = "medindex:reply:"
REPLY_KEY = re.compile(re.escape(REPLY_PREFIX) + "[0-9a-f]{32}")
REPLY_TTL_S = 300
# The answer goes only to a fresh reply list (never one that exists: a queue, a job's state),
# and the expiry set is that list's own.
_REPLY = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('rpush', KEYS[1], ARGV[1])
redis.call('expire', KEYS[1], ARGV[2])
return 1
"""


def calls(protocol: type) -> list[str]:
    """The calls a path carries: its protocol's own public methods."""
    return [name for name, value in vars(protocol).items() if callable(value) and name[0] != "_"]


class _Proxy:
    """Calls to the store worker: a subclass names its path and gets one method per call of
    that path's protocol, with the protocol's signature and documentation."""

    def __init_subclass__(cls, path: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in calls(PATHS[path]):
            setattr(cls, method, _remote(path, method))

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect_redis(settings.broker_url)  # fails early, on one line, if down

    def _call(self, path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        # The answer comes back on a reply list of its own: no result backend to keep.
        timeout = self.settings.store_call_timeout_s
        reply_to = REPLY_PREFIX + uuid.uuid4().hex
        # Past its deadline (wall-clock: the store worker may be another host) the call is
        # refused: it may have waited behind a long write, and its caller has given up.
        call = {
            "method": method,
            "args": to_jsonable_python(args),
            "kwargs": to_jsonable_python(kwargs),
            "reply_to": reply_to,
            "deadline": time.time() + timeout,
        }
        if path == STORE_QUERY_LIST:
            send_store_query(self.redis, call, expires=timeout)
        else:
            senders.send_store_call(path, call, expires=timeout)
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


def _remote(path: str, method: str) -> Callable[..., Any]:
    """The proxy's method for `method`, sent on `path`."""
    declared = getattr(PATHS[path], method)
    signature = inspect.signature(declared)

    def call(self: _Proxy, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)  # a wrong call fails here, as a method's
        return self._call(path, method, *bound.args[1:], **bound.kwargs)

    # Name, documentation and signature, not the protocol's abstract mark (`__dict__`).
    return update_wrapper(call, declared, updated=())


class RemoteReader(_Proxy, Reader, path=STORE_QUERY_LIST):
    """The queries, run by the store worker."""


class RemoteAdmin(RemoteReader, Admin, path=STORE_MANAGE_TASK):
    """Queries and the producer's management calls; never given to a search process."""


def answer_store_call(
    store: Store,
    client: redis.Redis,
    path: str,
    reply_to: str,
    method: str,
    args: list,
    kwargs: dict,
    deadline: float | None = None,
) -> None:
    """Run one call of `path` on the store this process owns; a refusal travels back as
    text with its kind (`transient`: an outage, worth retrying; otherwise the caller's
    mistake). A call past its `deadline` (`time.time()`) is refused: its caller stopped
    waiting."""
    if not isinstance(reply_to, str) or not REPLY_KEY.fullmatch(reply_to):
        log.error("store call %s refused: reply key %.80r is not a reply key", method, reply_to)
        return
    late = time.time() - deadline if deadline is not None else 0
    if method not in calls(PATHS[path]):
        answer: dict = {"error": f"store call {method!r} is not allowed on this path"}
    elif late > 0:
        refusal = f"store call {method} refused: its caller gave up {late:.1f}s ago"
        log.warning("%s (the store worker was busy, or the clocks disagree)", refusal)
        answer = {"error": refusal, "transient": True}
    else:
        try:
            answer = {"value": getattr(store, method)(**_typed(path, method, args, kwargs))}
        except StoreError as exc:
            answer = {"error": str(exc), "transient": exc.transient}
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            answer = {"error": f"store call {method}: {where}: {error['msg']}"}
        except Exception as exc:  # a bad argument must still get an answer, not a timeout
            answer = {"error": f"store call {method} failed: {first_line(exc)}"}
    if not client.eval(_REPLY, 1, reply_to, json.dumps(answer), REPLY_TTL_S):
        log.error("store call %s: reply key %s exists already; no answer sent", method, reply_to)


def serve_queries(store: Callable[[], Store], client: redis.Redis, stop: threading.Event) -> None:
    """Answer the queries waiting on their list, one after another, until `stop` is set, on
    the store `store()` opens: run on a thread of the process that owns it, beside its writes
    (Qdrant Edge releases the GIL while it writes and searches). A query whose caller is gone
    is refused, as late."""
    while not stop.is_set():
        try:
            item = client.blpop([STORE_QUERY_LIST], timeout=1)
        except redis.RedisError as exc:
            log.warning("store queries: Redis out of reach (%s); trying again", first_line(exc))
            stop.wait(1)
            continue
        if item is None:
            continue
        try:
            call = json.loads(item[1])
            answer_store_call(store(), client, STORE_QUERY_LIST, **call)
        except Exception as exc:  # one malformed call must not stop the queries of all
            log.error("store query %.80r refused: %s", item[1], first_line(exc))


def _typed(path: str, method: str, args: list, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name, validated against the protocol's type hints."""
    signature, arguments = _arguments(PATHS[path], method)
    bound = signature.bind(None, *args, **kwargs)
    del bound.arguments["self"]
    return dict(arguments.model_validate(bound.arguments))


@cache
def _arguments(protocol: type, method: str) -> tuple[inspect.Signature, type[BaseModel]]:
    """A method's signature, and a model of its arguments made from its type hints."""
    declared = getattr(protocol, method)
    signature = inspect.signature(declared)
    hints = get_type_hints(declared)
    fields: dict[str, Any] = {
        name: (hints[name], ... if p.default is p.empty else p.default)
        for name, p in signature.parameters.items()
        if name != "self"
    }
    return signature, create_model(f"{method}_arguments", **fields)
