"""medindex.store_call: reads on the embedded store, run by the one process that owns it."""

from __future__ import annotations

from pipeline.celery_app import app
from pipeline.remote_store import STORE_CALL_TASK, answer_store_call
from tasks.worker_state import store


@app.task(name=STORE_CALL_TASK, ignore_result=False)
def store_call(method: str, args: list, kwargs: dict) -> dict:
    return answer_store_call(store(), method, args, kwargs)
