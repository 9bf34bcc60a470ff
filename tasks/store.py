"""The store calls that cross the broker, run by the one process that owns the embedded store:
the producer's management calls on a task, run between writes; queries on a thread of their
own beside the writes (see pipeline.store.remote)."""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from pipeline.celery_app import app
from pipeline.messages import STORE_MANAGE_TASK, STORE_QUEUE
from pipeline.settings import get_settings
from pipeline.store.remote import answer_store_call, serve_queries
from tasks.worker_state import store, tracker

settings = get_settings()

_stop_queries = threading.Event()


@app.task(name=STORE_MANAGE_TASK)
def store_manage(**call: Any) -> None:
    answer_store_call(store(), tracker().redis, STORE_MANAGE_TASK, **call)


@worker_process_init.connect
def _serve_queries(**_: Any) -> None:
    """In the store worker's pool process (the one that owns the store), and only there."""
    if STORE_QUEUE not in app.amqp.queues.consume_from or settings.store_backend != "edge":
        return  # a server is queried directly, not through the store worker
    args = (store, tracker().redis, _stop_queries)
    threading.Thread(target=serve_queries, args=args, name="store-queries", daemon=True).start()


@worker_process_shutdown.connect
def _stop_serving(**_: Any) -> None:
    _stop_queries.set()
