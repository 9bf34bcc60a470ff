"""The store calls that cross the broker, run by the one process that owns the embedded store:
queries on one task, the producer's management calls on another (see pipeline.remote_store)."""

from __future__ import annotations

from pipeline.celery_app import app
from pipeline.remote_store import (
    MANAGE_CALLS,
    MANAGE_TASK,
    QUERY_CALLS,
    QUERY_TASK,
    answer_store_call,
)
from tasks.worker_state import store, tracker


@app.task(name=QUERY_TASK)
def store_query(
    method: str, args: list, kwargs: dict, reply_to: str, deadline: float | None = None
) -> None:
    answer_store_call(
        store(), tracker().redis, QUERY_CALLS, reply_to, method, args, kwargs, deadline
    )


@app.task(name=MANAGE_TASK)
def store_manage(
    method: str, args: list, kwargs: dict, reply_to: str, deadline: float | None = None
) -> None:
    answer_store_call(
        store(), tracker().redis, MANAGE_CALLS, reply_to, method, args, kwargs, deadline
    )
