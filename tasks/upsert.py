"""medindex.upsert: point messages buffered by celery-batches, written 1,000 points a call.

celery-batches hands buffered messages to the pool as one call. `PointBatches` reads each
message once, as it arrives (one that no write can take is refused alone, its rows failed with
the reason), decides which points go into that call (see `pipeline.batching`) and acknowledges
a message only after the call that wrote its last point succeeded. A failed call sends its
messages again, their retries counted; past the limit a message's points are parked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import redis
from celery.utils.log import get_task_logger
from celery_batches import SimpleRequest
from celery_batches.trace import apply_batches_task
from kombu.exceptions import OperationalError

from pipeline import ledger
from pipeline.batching import plan_flush
from pipeline.celery_app import app, senders
from pipeline.logs import bind_job
from pipeline.messages import UPSERT_TASK
from pipeline.progress import BrokerError
from pipeline.schemas import PointBatch, UnwritablePoints, read_points
from pipeline.settings import get_settings
from pipeline.writer import Span
from tasks.batches import RestartableBatches
from tasks.worker_state import tracker, writer

log = get_task_logger(__name__)
settings = get_settings()

# Redis out of reach while a message's fate is recorded: it stays unacknowledged, and Redis
# hands it out again after the visibility timeout.
BROKER_LOST = (redis.RedisError, OperationalError, BrokerError)


def _size(request: Any) -> int:
    return len(request.kwargs["batch"]["ids"])


@dataclass
class _Delivery:
    """What the consumer knows of one buffered message (one delivery: a redelivered message
    is a new Request object, so it starts clean)."""

    first_seen: float
    written: int = 0  # points already handed to a write call
    in_flight: int = 0  # pool calls holding some of its points
    last_sent: bool = False  # its last point is in a call
    failed: bool = False  # a call holding some of its points failed


class PointBatches(RestartableBatches):
    abstract = True
    batch_size = settings.upsert_batch_size
    flush_every = math.ceil(settings.upsert_batch_size / settings.job_size)
    # celery-batches' timer ticks several times per interval, so that a partial write follows
    # the last message by about one interval of quiet, not two.
    flush_interval = settings.flush_interval_s / 4
    quiet_s = settings.flush_interval_s
    # A partial write waits for a quiet interval, but never longer than this.
    max_wait_s = settings.visibility_timeout_s / 4

    def __init__(self) -> None:
        super().__init__()
        self._deliveries: WeakKeyDictionary[Any, _Delivery] = WeakKeyDictionary()

    def flush(self, requests: list[Any]) -> Any:
        kept = requests
        try:
            kept = requests = [request for request in requests if self._admitted(request)]
            if not requests:
                return None
            now = time.monotonic()
            states = [self._deliveries[r] for r in requests]
            sizes = [_size(r) for r in requests]
            skip = states[0].written
            quiet = now - max(state.first_seen for state in states) >= self.quiet_s
            # The embed step marks the points that complete a job: no more are coming.
            quiet = quiet or any(r.kwargs.get("ends_job") for r in requests)
            waited = now - min(state.first_seen for state in states)
            if sum(sizes) - skip < self.batch_size and not quiet and waited < self.max_wait_s:
                return None  # less than a full write while points still arrive: wait
            plan = plan_flush(sizes, skip, self.batch_size)
            spans = plan.spans(sizes, skip)
            in_call = requests[: len(spans)]
            kept = requests[plan.complete :]
            return self._send(in_call, spans)
        finally:
            self._keep(kept)  # whatever happens, nothing drained is forgotten

    def _admitted(self, request: Any) -> bool:
        """Whether a buffered message goes on to a write. Each is read once, as it arrives:
        one that no write can take (no point batch, sizes that disagree, NaN vectors) is
        refused alone, never joining a call beside good messages."""
        if request in self._deliveries:
            return True
        try:
            read_points(request.kwargs)
        except UnwritablePoints as exc:
            unwritable = exc
        else:
            self._deliveries[request] = _Delivery(time.monotonic())
            return True
        if unwritable.named:
            job_id = unwritable.named.job_id
            log.error("job=%s: point message %s refused: %s", job_id, request.id, unwritable)
        else:
            log.error("message %s %s, dropped", request.id, unwritable)
        self._finish(
            request,
            lambda: ledger.refuse(tracker(), unwritable),
            "task-failed",
            exception=str(unwritable),
        )
        return False

    def _send(self, in_call: list[Any], spans: list[tuple[int, int]]) -> Any:
        for request, (_, stop) in zip(in_call, spans, strict=True):
            state = self._deliveries[request]
            state.written, state.in_flight = stop, state.in_flight + 1
            state.last_sent = stop == _size(request)
        # The retry budget counts from each message's arrival, not from this call: messages
        # buffered behind a long outage must still end before Redis redelivers them.
        deadline = (
            min(self._deliveries[r].first_seen for r in in_call) + settings.store_retry_budget_s
        )
        return self._pool.apply_async(
            _apply_write,
            (self, [SimpleRequest.from_request(r) for r in in_call], spans, deadline),
            callback=lambda result: self._settle(in_call, result),
            # A pool process that died (OOM, SIGKILL) reports here, not to `callback`.
            error_callback=lambda exc: self._settle(in_call, None),
        )

    def _keep(self, requests: list[Any]) -> None:
        """Back into celery-batches' buffer, oldest first, for the next flush."""
        for request in requests:
            self._buffer.put(request)

    def _settle(self, in_call: list[Any], result: Any) -> None:
        """In the consumer, once a pool call ended: a message is acknowledged when every call
        holding its points succeeded, and tried again whole if any failed."""
        ok = isinstance(result, dict) and "written" in result
        for request in in_call:
            state = self._deliveries[request]
            state.in_flight -= 1
            state.failed = state.failed or not ok
            if not state.last_sent or state.in_flight:
                continue
            del self._deliveries[request]
            if state.failed:
                self._try_again(request)
            else:
                request.acknowledge()
                request.send_event("task-succeeded", result=repr(result), runtime=0)

    def _try_again(self, request: Any) -> None:
        """What `Task.retry` does, as the embed step does it: a copy of the message, one retry
        further, then the original acknowledged. One that has used its retries has its
        points parked with the reason instead, never to come round again."""
        retries = int((request.request_dict or {}).get("retries") or 0)
        batch = PointBatch.model_validate(request.kwargs["batch"])  # read whole when it arrived
        if retries >= settings.upsert_max_retries:
            reason = (
                f"the write of these points failed {retries + 1} times "
                "(the call raised, or its process died)"
            )
            log.error("job=%s: point message %s parked: %s", batch.job_id, request.id, reason)
            self._finish(
                request,
                lambda: ledger.park(tracker(), batch, reason),
                "task-failed",
                exception=reason,
            )
            return
        ends_job = bool(request.kwargs.get("ends_job"))
        self._finish(
            request,
            lambda: senders.send_points(batch, ends_job, task_id=request.id, retries=retries + 1),
            "task-retried",
            exception="write failed",
        )

    def _finish(self, request: Any, act: Callable[[], object], event: str, **fields: str) -> None:
        """`act` (record the message's fate in its job's state, or send it again), then the
        message acknowledged. Without Redis it stays unacknowledged: Redis hands it out again
        after the visibility timeout."""
        try:
            act()
        except BROKER_LOST as exc:
            log.warning("message %s: lost Redis (%s); left to come back", request.id, exc)
            return
        request.acknowledge()
        request.send_event(event, **fields)


def _apply_write(
    task: PointBatches, requests: list[SimpleRequest], spans: list, deadline: float
) -> Any:
    # celery-batches' tracer: signals, logging, and None when the call raised.
    return apply_batches_task(task, (requests, spans, deadline), 0, None)


@app.task(name=UPSERT_TASK, base=PointBatches)
def upsert(requests: list[SimpleRequest], spans: list, deadline: float) -> dict:
    batches = [PointBatch.model_validate(r.kwargs["batch"]) for r in requests]
    bind_job(",".join(sorted({b.job_id for b in batches})))
    report = writer().write(
        [Span(b, start, stop) for b, (start, stop) in zip(batches, spans, strict=True)], deadline
    )
    ledger.record(tracker(), report)
    log.info("wrote %d points from %d messages", report.points_written, len(requests))
    return {"written": report.points_written}
