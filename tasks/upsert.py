"""medindex.upsert: point messages buffered by celery-batches, written 1,000 points a call.

celery-batches hands buffered messages to the pool as one call. `PointBatches` decides which
points go into that call (see `pipeline.batching`) and acknowledges a message only after the
call that wrote its last point succeeded; a failed call requeues its messages.
"""

from __future__ import annotations

import math
import time
from typing import Any

from celery.utils.log import get_task_logger
from celery_batches import Batches, SimpleRequest

from pipeline.batching import plan_flush
from pipeline.celery_app import app
from pipeline.logs import bind_job
from pipeline.schemas import PointBatch
from pipeline.settings import get_settings
from pipeline.writer import Span, Writer
from tasks.worker_state import store, tracker

log = get_task_logger(__name__)
settings = get_settings()


def _size(request: Any) -> int:
    return len(request.kwargs["batch"]["ids"])


class PointBatches(Batches):
    abstract = True
    batch_size = settings.upsert_batch_size
    flush_every = math.ceil(settings.upsert_batch_size / settings.job_size)
    flush_interval = settings.flush_interval_s
    # A partial write waits for a quiet interval, but never longer than this.
    max_wait_s = settings.visibility_timeout_s / 4

    def __init__(self) -> None:
        super().__init__()
        self._written: dict[str, int] = {}  # message id -> points already written
        self._first_seen: dict[str, float] = {}
        self._failed: set[str] = set()  # messages a failed call held part of

    def flush(self, requests: list[Any]) -> Any:
        now = time.monotonic()
        fresh = any(r.id not in self._first_seen for r in requests)
        for request in requests:
            self._first_seen.setdefault(request.id, now)
        sizes = [_size(r) for r in requests]
        skip = self._written.get(requests[0].id, 0)
        waited = now - min(self._first_seen[r.id] for r in requests)
        if sum(sizes) - skip < self.batch_size and fresh and waited < self.max_wait_s:
            # Less than a full write while points still arrive: wait for a quiet interval.
            self._keep(requests)
            return None
        plan = plan_flush(sizes, skip, self.batch_size)
        whole = requests[: plan.complete]
        spans = [(skip if i == 0 else 0, size) for i, size in enumerate(sizes[: plan.complete])]
        split = requests[plan.complete] if plan.take else None
        if split is not None:
            start = skip if plan.complete == 0 else 0
            spans.append((start, start + plan.take))
            self._written[split.id] = start + plan.take
        self._keep(requests[plan.complete :])
        in_call = whole + ([split] if split is not None else [])
        return self._pool.apply_async(
            _apply_write,
            (self, [SimpleRequest.from_request(r) for r in in_call], spans),
            callback=lambda result: self._settle(whole, split, result),
        )

    def _keep(self, requests: list[Any]) -> None:
        """Back into celery-batches' buffer, oldest first, for the next flush."""
        for request in requests:
            self._buffer.put(request)

    def _settle(self, whole: list[Any], split: Any, result: Any) -> None:
        """Runs in the consumer once the pool call returned: acknowledge or requeue."""
        ok = isinstance(result, dict) and "written" in result
        if not ok and split is not None:
            self._failed.add(split.id)
        for request in whole:
            self._first_seen.pop(request.id, None)
            self._written.pop(request.id, None)
            if ok and request.id not in self._failed:
                request.acknowledge()
                request.send_event("task-succeeded", result=repr(result), runtime=0)
            else:
                self._failed.discard(request.id)
                request.reject(requeue=True)
                request.send_event("task-failed", exception="write failed; requeued")


def _apply_write(task: PointBatches, requests: list[SimpleRequest], spans: list) -> Any:
    # celery-batches' tracer: signals, logging, and None when the call raised.
    from celery_batches.trace import apply_batches_task

    return apply_batches_task(task, (requests, spans), 0, None)


@app.task(name="medindex.upsert", base=PointBatches)
def upsert(requests: list[SimpleRequest], spans: list) -> dict:
    writer = Writer(store(), tracker(), settings.upsert_batch_size)
    batches = [PointBatch.model_validate(r.kwargs["batch"]) for r in requests]
    bind_job(",".join(sorted({b.job_id for b in batches})))
    written = writer.write(
        [Span(b, start, stop) for b, (start, stop) in zip(batches, spans, strict=True)]
    )
    log.info("wrote %d points from %d messages", written, len(requests))
    return {"written": written}
