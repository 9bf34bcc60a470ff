"""medindex.embed: one job of row references in, its points out to the `upsert` queue."""

from __future__ import annotations

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from kombu.exceptions import EncodeError, OperationalError

from pipeline.celery_app import UPSERT_QUEUE, app
from pipeline.embed import embed_job
from pipeline.errors import MedindexError, first_line
from pipeline.logs import bind_job
from pipeline.model import get_embedder, share_cpu
from pipeline.schemas import EmbedJob
from pipeline.settings import get_settings
from tasks.upsert import upsert
from tasks.worker_state import tracker

log = get_task_logger(__name__)


@worker_process_init.connect
def _share_cpu(**_: object) -> None:
    share_cpu(get_settings().embed_concurrency)


# Errors that a second try would meet again (a dataset that cannot be loaded, a row that is no
# longer there, a payload that cannot be encoded): the job's rows fail at once, with the reason.
DETERMINISTIC = (MedindexError, EncodeError, ValueError, TypeError, LookupError)


@app.task(name="medindex.embed", bind=True, max_retries=get_settings().embed_max_retries)
def embed(self: Task, job: dict) -> dict:
    parsed = EmbedJob.model_validate(job)
    bind_job(parsed.job_id)
    try:
        # Counted before the work and cleared after it: what remains counts the deliveries
        # whose worker died on these rows (out of memory, killed). Past the limit the rows
        # fail, instead of the job coming back to the next worker forever.
        lost = tracker().start_delivery(parsed.job_id, parsed.rows[0]) - 1
        if lost >= get_settings().embed_max_lost:
            reason = f"the embed worker was lost {lost} times on these rows (out of memory?)"
            return _fail(parsed, reason)
        outcome = _embed(parsed)
        tracker().end_delivery(parsed.job_id, parsed.rows[0])
        return outcome
    except (redis.RedisError, OperationalError) as exc:
        # Redis gone for longer than the clients' retries: give the job back instead of
        # failing it. If even that cannot reach Redis, the job stays unacknowledged there and
        # comes back after the visibility timeout.
        log.warning("job=%s: lost Redis (%s); job returned to the queue", parsed.job_id, exc)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:  # anything else must end as failed rows, never as a lost job
        reason = f"embedding failed: {type(exc).__name__}: {first_line(exc)}"
        if not isinstance(exc, DETERMINISTIC) and self.request.retries < self.max_retries:
            log.warning("job=%s: %s; try %d again", parsed.job_id, reason, self.request.retries)
            tracker().end_delivery(parsed.job_id, parsed.rows[0])
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.error("job=%s: %s", parsed.job_id, reason, exc_info=not isinstance(exc, DETERMINISTIC))
        return _fail(parsed, reason)


def _fail(parsed: EmbedJob, reason: str) -> dict:
    """Every row of the job failed with the reason: the job ends, and `report` says why."""
    tracker().fail_rows(parsed.job_id, parsed.rows, reason)
    tracker().end_delivery(parsed.job_id, parsed.rows[0])
    log.warning("job=%s rows %d-%d failed: %s", parsed.job_id, parsed.rows[0], parsed.rows[-1],
                reason)  # fmt: skip
    return {"job_id": parsed.job_id, "points": 0, "failed": len(parsed.rows)}


def _embed(parsed: EmbedJob) -> dict:
    settings = get_settings()
    if tracker().is_cancelled(parsed.job_id):
        log.info(
            "job=%s cancelled: rows %d-%d skipped", parsed.job_id, parsed.rows[0], parsed.rows[-1]
        )
        return {"job_id": parsed.job_id, "skipped": len(parsed.rows)}
    embedder = get_embedder(parsed.model, settings.device, parsed.pooling, settings.preprocessing)
    result = embed_job(parsed, embedder, settings)
    tracker().mark_failed(parsed.job_id, result.failures)
    tracker().mark_embedded(parsed.job_id, result.batch.rows)
    if len(result.batch):
        upsert.apply_async(
            kwargs={"batch": result.batch.model_dump()},
            queue=UPSERT_QUEUE,
            # What Flower shows and keeps: never the payloads (patient metadata).
            argsrepr="()",
            kwargsrepr=f"job {parsed.job_id}: {len(result.batch)} points",
        )
    log.info(
        "rows %d-%d: %d embedded, %d failed",
        parsed.rows[0],
        parsed.rows[-1],
        len(result.batch),
        len(result.failures),
    )
    return {"job_id": parsed.job_id, "points": len(result.batch), "failed": len(result.failures)}
