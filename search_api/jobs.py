"""The page's Jobs view: ingests and reindexes, newest first, from the job state in Redis
(pipeline.progress): progress, rate, ETA, failures and their commonest reasons; and where
Flower is, for the tasks themselves."""

from __future__ import annotations

import re
from collections import Counter

from fastapi import APIRouter, Request

from pipeline.progress import AUDIT_KIND, JobTracker, Progress
from pipeline.settings import get_settings
from search_api.deps import broker

router = APIRouter()
RECENT_JOBS = 20
REASON_SAMPLE = 200  # failures read to name a job's commonest reasons
REASONS = 3
# A reindex builds version `ALIAS__vN` (producers.reindex.version_name) through an ingest job.
REINDEX_VERSION = re.compile(r"(?P<alias>.+)__v\d+")


@router.get("/jobs")
def jobs(request: Request) -> dict:
    tracker = JobTracker(broker())
    recent = [_job(tracker, job_id) for job_id in tracker.recent_jobs(RECENT_JOBS)]
    port = get_settings().flower_port
    flower = f"http://{request.url.hostname}:{port}/" if port else None
    return {"jobs": recent, "flower": flower}


def _job(tracker: JobTracker, job_id: str) -> dict:
    progress = tracker.progress(job_id)
    collection = progress.meta.get("collection") or ""
    version = REINDEX_VERSION.fullmatch(collection)
    reasons = Counter(f["reason"] for f in tracker.failure_sample(job_id, REASON_SAMPLE))
    return {
        "job_id": job_id,
        "kind": _kind(progress, version),
        "collection": collection,
        "dataset": progress.meta.get("dataset"),
        "state": progress.state,
        "total": progress.total,
        "indexed": progress.indexed,
        "failed": progress.failed,
        "images_per_s": round(progress.rate(), 2),
        "eta_s": progress.eta_s(),
        "created_at": progress.created_at,
        "reasons": reasons.most_common(REASONS),
    }


def _kind(progress: Progress, version: re.Match | None) -> str:
    if progress.is_audit:
        return AUDIT_KIND
    return f"reindex of {version['alias']}" if version else "ingest"
