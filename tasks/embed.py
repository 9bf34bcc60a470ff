"""medindex.embed: jobs of row references in, each job's points out to the `upsert` queue.

celery-batches buffers the queued jobs (16 images each) in the worker's consumer and hands
several to a pool process in one call; there they are fused into forward passes of up to the
batch size (`pipeline.embed.embed_jobs`, decoding overlapped with the model), and each job's
points are sent on as soon as its pass ends. The consumer acknowledges a job only once the call
that held it has returned, so after its points were sent on; a pool process that died has its
jobs requeued, and a dead worker's unacknowledged jobs come back from Redis.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import redis
from celery.signals import worker_init, worker_process_init
from celery.utils.log import get_task_logger
from celery_batches import SimpleRequest
from celery_batches.trace import apply_batches_task
from kombu.exceptions import EncodeError, OperationalError
from pydantic import ValidationError

from pipeline.celery_app import app, senders
from pipeline.errors import MedindexError, first_line
from pipeline.logs import bind_job
from pipeline.messages import EMBED_QUEUE, EMBED_TASK
from pipeline.schemas import EmbedJob
from pipeline.settings import get_settings
from tasks.batches import RestartableBatches
from tasks.worker_state import tracker

if TYPE_CHECKING:
    from pipeline.embed import EmbedResult

log = get_task_logger(__name__)
settings = get_settings()

# Errors that a second try would meet again (a dataset that cannot be loaded, a row that is no
# longer there, a payload that cannot be encoded): the job's rows fail at once, with the reason.
DETERMINISTIC = (MedindexError, EncodeError, ValueError, TypeError, LookupError)
# Redis gone for longer than the clients' retries: the job goes back to the queue.
BROKER_LOST = (redis.RedisError, OperationalError)


def _embeds() -> bool:
    """Whether this worker takes embed jobs. Every worker loads this module (one app); only
    one that embeds loads torch and the model code (a store worker never does: 520 MiB less
    anonymous memory at bench-scale's 100,000 step, 4.3 s of imports saved)."""
    return EMBED_QUEUE in app.amqp.queues.consume_from


@worker_init.connect
def _load_model_code(**_: object) -> None:
    """Before the pool forks, so that its processes share the libraries."""
    if _embeds():
        import pipeline.embed  # noqa: F401


@worker_process_init.connect
def _share_cpu(**_: object) -> None:
    if _embeds():
        from pipeline.embedder import share_cpu

        share_cpu(get_settings().embed_concurrency)


@cache
def decoder() -> ThreadPoolExecutor:
    """This pool process' decoding threads (made after the fork, like the model)."""
    return ThreadPoolExecutor(get_settings().embed_decode_threads, "decode")


@dataclass(frozen=True)
class Delivery:
    """One queued job as this call received it."""

    id: str
    job: EmbedJob
    retries: int


class JobBatches(RestartableBatches):
    abstract = True
    flush_every = settings.embed_jobs_per_call
    flush_interval = 0.05
    # Fewer jobs than a call holds wait for more, until none has come for this long.
    quiet_s = 0.1

    def __init__(self) -> None:
        super().__init__()
        self._arrived: WeakKeyDictionary[Any, float] = WeakKeyDictionary()

    def flush(self, requests: list[Any]) -> None:
        now = time.monotonic()
        newest = max(self._arrived.setdefault(request, now) for request in requests)
        size = self.flush_every
        calls = [requests[start : start + size] for start in range(0, len(requests), size)]
        if len(calls[-1]) < size and now - newest < self.quiet_s:
            for request in calls.pop():  # back into celery-batches' buffer, oldest first
                self._buffer.put(request)
        for call in calls:
            self._call(call)

    def _call(self, requests: list[Any]) -> Any:
        return self._pool.apply_async(
            _apply_embed,
            (self, [SimpleRequest.from_request(r) for r in requests]),
            callback=lambda acks: self._settle(requests, acks),
            # A pool process that died (OOM, SIGKILL) reports here, not to `callback`.
            error_callback=lambda exc: self._settle(requests, {}),
        )

    def _settle(self, requests: list[Any], acks: dict[str, bool] | None) -> None:
        """In the consumer, once the call ended: each job acknowledged, or requeued (Redis was
        lost while it ran, or its pool process died)."""
        for request in requests:
            if (acks or {}).get(request.id):
                request.acknowledge()
                request.send_event("task-succeeded", result="embedded", runtime=0)
            else:
                request.reject(requeue=True)
                request.send_event("task-failed", exception="requeued")


def _apply_embed(task: JobBatches, requests: list[SimpleRequest]) -> Any:
    # celery-batches' tracer: signals, logging, and None when the call raised.
    return apply_batches_task(task, (requests,), 0, None)


@app.task(name=EMBED_TASK, base=JobBatches)
def embed(requests: list[SimpleRequest]) -> dict[str, bool]:
    """Embed the call's jobs; returns, per message id, True to acknowledge it (its points sent
    on, its rows failed with a reason, or a later try queued) and False to requeue it."""
    acks = {request.id: True for request in requests}  # a message that is no job is dropped
    groups: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for request in requests:
        delivery = _parse(request)
        if delivery and _admit(delivery, acks):
            groups[delivery.job.model, delivery.job.pooling].append(delivery)
    for (model, pooling), deliveries in groups.items():
        by_job = {id(d.job): d for d in deliveries}
        for job, outcome in _embed_group(model, pooling, [d.job for d in deliveries]):
            delivery = by_job[id(job)]
            bind_job(job.job_id, delivery.id)
            acks[delivery.id] = _finish(delivery, outcome)
    return acks


def _parse(request: SimpleRequest) -> Delivery | None:
    try:
        job = EmbedJob.model_validate(request.args[0] if request.args else request.kwargs["job"])
    except (ValidationError, LookupError) as exc:
        log.error("message %s is no embed job, dropped: %s", request.id, first_line(exc))
        return None
    retries = int((request.request_dict or {}).get("retries") or 0)
    return Delivery(request.id, job, retries)


def _admit(delivery: Delivery, acks: dict[str, bool]) -> bool:
    """Whether the job is to be embedded: counted as delivered first, so that what remains
    counted is the deliveries whose worker died on these rows (out of memory, killed); past
    the limit its rows fail, and a cancelled job's rows are skipped (but those `retry` sent)."""
    job = delivery.job
    bind_job(job.job_id, delivery.id)
    try:
        lost = tracker().start_delivery(job.job_id, job.rows[0]) - 1
        if lost >= settings.embed_max_lost:
            _fail(job, f"the embed worker was lost {lost} times on these rows (out of memory?)")
            return False
        if tracker().skips(job.job_id, job.rows):
            log.info("job=%s cancelled: rows %d-%d skipped", job.job_id, job.rows[0], job.rows[-1])
            tracker().end_delivery(job.job_id, job.rows[0])
            return False
        return True
    except BROKER_LOST as exc:
        acks[delivery.id] = _requeue(job, exc)
        return False


def _embed_group(
    model: str, pooling: str, jobs: list[EmbedJob]
) -> Iterable[tuple[EmbedJob, EmbedResult | Exception]]:
    from pipeline.embed import embed_jobs
    from pipeline.embedder import Kernels, get_embedder

    try:
        embedder = get_embedder(
            model, settings.device, pooling, settings.preprocessing, Kernels.of(settings)
        )
    except Exception as exc:  # every job of the group meets it
        return [(job, exc) for job in jobs]
    return embed_jobs(jobs, embedder, settings, settings.embed_pass_size, decoder())


def _finish(delivery: Delivery, outcome: EmbedResult | Exception) -> bool:
    """Send the job's points on, or deal with its error as a single job's task would."""
    job = delivery.job
    try:
        if isinstance(outcome, Exception):
            raise outcome
        _send(job, outcome)
        tracker().end_delivery(job.job_id, job.rows[0])
        return True
    except BROKER_LOST as exc:
        return _requeue(job, exc)
    except Exception as exc:  # anything else must end as failed rows, never as a lost job
        try:
            return _retry_or_fail(delivery, exc)
        except BROKER_LOST as lost:
            return _requeue(job, lost)


def _requeue(job: EmbedJob, exc: Exception) -> bool:
    # If even the requeue cannot reach Redis, the job stays unacknowledged there and comes
    # back after the visibility timeout.
    log.warning("job=%s: lost Redis (%s); job returned to the queue", job.job_id, exc)
    return False


def _retry_or_fail(delivery: Delivery, exc: Exception) -> bool:
    job = delivery.job
    reason = f"embedding failed: {type(exc).__name__}: {first_line(exc)}"
    if not isinstance(exc, DETERMINISTIC) and delivery.retries < settings.embed_max_retries:
        log.warning("job=%s: %s; try %d again", job.job_id, reason, delivery.retries)
        tracker().end_delivery(job.job_id, job.rows[0])
        # What `Task.retry` does: a copy of the message, one try further, sent later.
        senders.send_embed_job(job, countdown=2**delivery.retries, retries=delivery.retries + 1)
        return True
    log.error("job=%s: %s", job.job_id, reason, exc_info=not isinstance(exc, DETERMINISTIC))
    _fail(job, reason)
    return True


def _fail(job: EmbedJob, reason: str) -> None:
    """Every row of the job failed with the reason: the job ends, and `report` says why."""
    tracker().fail_rows(job.job_id, job.rows, reason)
    tracker().end_delivery(job.job_id, job.rows[0])
    log.warning("job=%s rows %d-%d failed: %s", job.job_id, job.rows[0], job.rows[-1], reason)


def _send(job: EmbedJob, result: EmbedResult) -> None:
    tracker().mark_failed(job.job_id, result.failures)
    tracker().mark_embedded(job.job_id, result.batch.rows)
    if len(result.batch):
        senders.send_points(result.batch, ends_job=_ends_job(job.job_id))
    log.info(
        "job=%s rows %d-%d: %d embedded, %d failed",
        job.job_id, job.rows[0], job.rows[-1], len(result.batch), len(result.failures),
    )  # fmt: skip


def _ends_job(job_id: str) -> bool:
    """Whether every row of the job is now embedded or failed: the store worker then writes
    its buffered points at once instead of waiting for a quiet interval."""
    try:
        progress = tracker().progress(job_id)
    except MedindexError:  # the job's record is gone: nothing to hurry
        return False
    return progress.embedded + progress.failed >= progress.total
