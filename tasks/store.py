"""The store calls that cross the broker, run by the one process that owns the embedded store:
queries on one task, the producer's management calls on another (see pipeline.store.remote)."""

from __future__ import annotations

from typing import Any

from pipeline.celery_app import app
from pipeline.messages import STORE_MANAGE_TASK, STORE_QUERY_TASK
from pipeline.store.remote import answer_store_call
from tasks.worker_state import store, tracker


@app.task(name=STORE_QUERY_TASK)
def store_query(**call: Any) -> None:
    answer_store_call(store(), tracker().redis, STORE_QUERY_TASK, **call)


@app.task(name=STORE_MANAGE_TASK)
def store_manage(**call: Any) -> None:
    answer_store_call(store(), tracker().redis, STORE_MANAGE_TASK, **call)
