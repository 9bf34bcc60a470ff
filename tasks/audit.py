"""One shard of an audit: its points' neighbour queries, answered by the store, kept in Redis
for the producer's merge (pipeline.neighbours)."""

from __future__ import annotations

import logging

from celery import Task

from pipeline.celery_app import app, senders
from pipeline.errors import MedindexError, first_line
from pipeline.logs import bind_job
from pipeline.messages import AUDIT_TASK
from pipeline.neighbours import AuditPlan, audit_shard, keep_shard
from pipeline.settings import get_settings
from pipeline.store import open_reader
from tasks.worker_state import tracker

log = logging.getLogger(__name__)


@app.task(name=AUDIT_TASK, bind=True)
def audit(self: Task, job_id: str, plan: dict, shard: int, rows: list[int], ids: list[str]) -> None:
    """A shard ends answered, tried again later (a store outage) or failed with the reason; a
    shard whose worker keeps dying on it (out of memory) fails after `embed_max_lost` tries."""
    bind_job(job_id, self.request.id)
    if tracker().is_cancelled(job_id):
        log.info("audit cancelled: shard %d skipped", shard)
        return
    settings = get_settings()
    lost = tracker().start_delivery(job_id, rows[0]) - 1
    try:
        if lost >= settings.embed_max_lost:
            _fail(job_id, shard, rows, f"the embed worker was lost {lost} times on this shard")
            return
        result = audit_shard(open_reader(settings), AuditPlan.model_validate(plan), ids)
    except Exception as exc:
        tries = self.request.retries or 0
        if getattr(exc, "transient", False) and tries < settings.embed_max_retries:
            log.warning("shard %d: %s; try %d again", shard, first_line(exc), tries)
            # What `Task.retry` does: a copy of the message, one try further, sent later.
            senders.send_audit_shard(job_id, plan, shard, rows, ids, countdown=2**tries,
                                     retries=tries + 1)  # fmt: skip
            return
        if not isinstance(exc, MedindexError):  # not the store's answer: a defect, traced
            log.exception("shard %d", shard)
        _fail(job_id, shard, rows, f"neighbour queries failed: {type(exc).__name__}: "
                                   f"{first_line(exc)}")  # fmt: skip
        return
    finally:
        tracker().end_delivery(job_id, rows[0])
    keep_shard(tracker().redis, job_id, shard, result)
    tracker().mark_embedded(job_id, rows)
    tracker().mark_indexed(job_id, rows)


def _fail(job_id: str, shard: int, rows: list[int], reason: str) -> None:
    tracker().fail_rows(job_id, rows, reason)
    log.warning("shard %d: rows %d-%d failed: %s", shard, rows[0], rows[-1], reason)
