"""What `medindex status` shows: queue depths, live workers and jobs' progress."""

from __future__ import annotations

from pipeline.celery_app import app
from pipeline.messages import QUEUES, UNACKED
from pipeline.progress import JobTracker, connect_redis
from pipeline.settings import Settings


def collect(settings: Settings, job_id: str | None = None) -> dict:
    client = connect_redis(settings.broker_url)
    tracker = JobTracker(client)
    queues = {name: client.llen(name) for name in QUEUES}
    workers = sorted(name for reply in app.control.ping(timeout=1.0) for name in reply)
    job_ids = [job_id] if job_id else tracker.recent_jobs(limit=10)
    return {
        "queues": queues,
        "unacked": client.hlen(UNACKED),
        "workers": workers,
        "jobs": [_job(tracker, j) for j in job_ids],
    }


def _job(tracker: JobTracker, job_id: str) -> dict:
    progress = tracker.progress(job_id)
    return {
        "job_id": job_id,
        "collection": progress.meta.get("collection"),
        "state": progress.state,
        "total": progress.total,
        "embedded": progress.embedded,
        "indexed": progress.indexed,
        "failed": progress.failed,
        "images_per_s": round(progress.rate(), 2),
        "eta_s": progress.eta_s(),
    }
