"""medindex.embed: one job of row references in, its points out to the `upsert` queue."""

from __future__ import annotations

import redis
from celery.exceptions import Reject
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError

from pipeline.celery_app import UPSERT_QUEUE, app
from pipeline.embed import embed_job
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


@app.task(name="medindex.embed")
def embed(job: dict) -> dict:
    parsed = EmbedJob.model_validate(job)
    bind_job(parsed.job_id)
    try:
        return _embed(parsed)
    except (redis.RedisError, OperationalError) as exc:
        # Redis gone for longer than the clients' retries: give the job back instead of
        # failing it. If even that cannot reach Redis, the job stays unacknowledged there and
        # comes back after the visibility timeout.
        log.warning("job=%s: lost Redis (%s); job returned to the queue", parsed.job_id, exc)
        raise Reject(exc, requeue=True) from exc


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
        upsert.apply_async(kwargs={"batch": result.batch.model_dump()}, queue=UPSERT_QUEUE)
    log.info(
        "rows %d-%d: %d embedded, %d failed",
        parsed.rows[0],
        parsed.rows[-1],
        len(result.batch),
        len(result.failures),
    )
    return {"job_id": parsed.job_id, "points": len(result.batch), "failed": len(result.failures)}
