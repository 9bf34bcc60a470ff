"""medindex.store_call: reads on the embedded store, run by the one process that owns it."""

from __future__ import annotations

from pipeline.celery_app import app
from pipeline.remote_store import STORE_CALL_TASK, answer_store_call
from tasks.worker_state import store, tracker


@app.task(name=STORE_CALL_TASK)
def store_call(method: str, args: list, kwargs: dict, reply_to: str) -> None:
    answer_store_call(store(), tracker().redis, reply_to, method, args, kwargs)
