"""One shard of an audit: its points' neighbour queries, answered by the store, kept in Redis
for the producer's merge (pipeline.neighbours)."""

from __future__ import annotations

import logging

from pipeline.celery_app import app
from pipeline.messages import AUDIT_TASK
from pipeline.neighbours import AuditPlan, audit_shard, keep_shard
from pipeline.settings import get_settings
from pipeline.store import open_reader
from tasks.worker_state import tracker

log = logging.getLogger(__name__)


@app.task(name=AUDIT_TASK)
def audit(job_id: str, plan: dict, shard: int, rows: list[int], ids: list[str]) -> None:
    if tracker().is_cancelled(job_id):
        log.info("audit %s cancelled: shard %d skipped", job_id, shard)
        return
    result = audit_shard(open_reader(get_settings()), AuditPlan.model_validate(plan), ids)
    keep_shard(tracker().redis, job_id, shard, result)
    tracker().mark_embedded(job_id, rows)
    tracker().mark_indexed(job_id, rows)
