"""`medindex audit`: a collection's points sharded into jobs of neighbour queries, run on the
workers like an ingest's jobs (progress, resume, cancel, Flower), then merged here into the
findings (pipeline.audit) and the report (pipeline.audit_report).

The job's rows are the collection's points in id order: a resumed audit (`--job-id`) sends
again only the shards not yet answered, and refuses a collection whose points changed since.
The last audit of each collection (version, for an alias) is kept in Redis for the page's
Audit view (`pipeline.audit_report.keep_report`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
from redis import Redis

from pipeline import audit
from pipeline.audit_report import (
    keep_report,
    last_report,
    pair_records,
    summary,
    write_report,
)
from pipeline.celery_app import senders
from pipeline.errors import MedindexError
from pipeline.fingerprint import FINE_DISTANCE, MAX_FOUND_DISTANCE
from pipeline.neighbours import (
    AUDIT_HNSW_EF,
    AuditPlan,
    Edge,
    Facts,
    ShardResult,
    keep_shard,
    shard_results,
)
from pipeline.progress import AUDIT_KIND, JobTracker, Progress, connect_redis
from pipeline.settings import Settings
from pipeline.sources import Schema
from pipeline.store import Reader, open_reader
from pipeline.store.points import every_point
from producers.ingest import Sending, wait

# Payload fields taken for the patient (the unit of leakage) and for images that belong
# together (one lesion, one case), when not given: the readers' and seeds' names for them.
PATIENT_FIELDS = ("patient", "patient_id", "subject_id", "case_id")
GROUP_FIELDS = ("lesion_id", "patient_id", "patient", "case_id")
_PAGE = 1000
_VECTORS_PAGE = 256  # vectors read a call: about 2 MB of JSON


class AuditError(MedindexError):
    """An audit that cannot run as asked; the message says why, on one line."""


@dataclass(frozen=True)
class AuditRequest:
    collection: str
    out: Path | None = None
    job_id: str | None = None
    k: int = 5
    embedding_threshold: float | None = None
    phash_distance: int = 3
    fine_distance: int = FINE_DISTANCE
    outlier_threshold: float | None = None
    patient_field: str | None = None
    group_field: str | None = None
    shard_size: int = 64
    beam: int = AUDIT_HNSW_EF  # HNSW's beam of the neighbour questions
    # Only the points the collection's last audit has not seen are queried (against all of
    # them); that audit's results are carried into this one (`medindex ingest --audit`).
    incremental: bool = False


def run_audit(
    request: AuditRequest, settings: Settings, on_progress: Callable[[Progress], None]
) -> dict:
    """The audit's summary (written to `request.out` with the other files, if given)."""
    if not 0 <= request.phash_distance <= MAX_FOUND_DISTANCE:
        raise AuditError(
            f"--phash-distance must be 0-{MAX_FOUND_DISTANCE}: the index misses more distant ones"
        )
    if not 0 <= request.fine_distance <= 256:
        raise AuditError("--phash256-distance must be 0-256")
    started = time.monotonic()
    reader = open_reader(settings)
    tracker = JobTracker(connect_redis(settings.broker_url))
    ids, splits, schema = _points(reader, request.collection)
    plan = _plan(request, schema, len(splits))
    version = reader.aliases().get(request.collection, request.collection)
    earlier = _earlier(tracker.redis, version) if request.incremental else []
    seen = {f.id for r in earlier for f in r.facts}
    job_id, sending = _start(tracker, request, plan, [i for i in ids if i not in seen])
    for n, result in enumerate(earlier):  # carried on, for the next increment
        keep_shard(tracker.redis, job_id, -1 - n, result)
    final = wait(tracker, job_id, on_progress, settings=settings, sending=sending)
    if final.cancelled:
        raise AuditError(f"audit {job_id} was cancelled; `{final.resumed_by}` resumes it")
    if final.failed:
        reason = next((f["reason"] for f in tracker.failure_sample(job_id, 1)), "unknown")
        raise AuditError(f"audit {job_id}: {final.failed} of {final.total} points could not be "
                         f"asked ({reason}); `{final.resumed_by}` asks them again")  # fmt: skip
    facts, edges = _merge(tracker.redis, job_id, set(ids), request)
    limits = audit.thresholds(
        facts, edges, request.embedding_threshold, request.phash_distance,
        request.outlier_threshold, request.fine_distance,
    )  # fmt: skip
    findings = audit.find(facts, edges, limits)
    findings.clusters = _pairwise(reader, plan.collection, findings.clusters)
    report = summary(findings, request.collection, time.monotonic() - started, job_id)
    report["fields"] = {"patient": plan.patient_field, "label": plan.label_field,
                        "group": plan.group_field, "splits": sorted(splits)}  # fmt: skip
    report["points_queried"] = final.total  # all of them, or an increment's new ones
    if request.out:
        write_report(findings, report, request.out)
    keep_report(tracker.redis, version, report, pair_records(findings))
    return report


def _merge(
    redis: Redis, job_id: str, present: set[str], request: AuditRequest
) -> tuple[list[Facts], list[Edge]]:
    """The shards' facts (of the points still `present`), then, read again, the edges the
    findings can use (`audit.needed`): most of a shard's are neighbours far below the
    threshold, and holding them all took a gigabyte at 100,000 points."""
    facts = [f for r in shard_results(redis, job_id) for f in r.facts if f.id in present]
    floor = audit.thresholds(facts, [], request.embedding_threshold).embedding
    group = {f.id: f.group for f in facts}
    edges = [
        e for r in shard_results(redis, job_id) for e in r.edges if audit.needed(e, floor, group)
    ]
    return facts, edges


def _earlier(redis: Redis, version: str) -> list[ShardResult]:
    """The shard results of the collection's last audit, while Redis keeps them."""
    report = last_report(redis, version)
    return list(shard_results(redis, report["job_id"])) if report else []


def _points(reader: Reader, collection: str) -> tuple[list[str], set[str], Schema]:
    """Every point id in id order, the splits they come from, the collection's schema."""
    names = set(reader.collections()) | set(reader.aliases())
    if collection not in names:
        raise AuditError(f"no collection {collection!r} (see `medindex collections`)")
    ids, splits = [], set()
    for hit in every_point(reader, collection, _PAGE):
        ids.append(hit["id"])
        splits.add(str(hit["payload"].get("source", {}).get("split", "train")))
    if not ids:
        raise AuditError(f"collection {collection!r} holds no points")
    return ids, splits, Schema.from_dict(reader.metadata(collection).get("schema") or {})


def _plan(request: AuditRequest, schema: Schema, splits: int) -> AuditPlan:
    fields = {f.name for f in schema.fields}
    for given in (request.patient_field, request.group_field):
        if given and given not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise AuditError(f"field {given!r} is not in the collection's schema ({known})")
    return AuditPlan(
        collection=request.collection,
        k=request.k,
        hnsw_ef=request.beam,
        phash_distance=request.phash_distance,
        fine_distance=request.fine_distance,
        patient_field=request.patient_field
        or next((f for f in PATIENT_FIELDS if f in fields), None),
        label_field=schema.label_field,
        group_field=request.group_field or next((f for f in GROUP_FIELDS if f in fields), None),
        splits=splits,
    )


def _start(
    tracker: JobTracker, request: AuditRequest, plan: AuditPlan, ids: list[str]
) -> tuple[str, Sending]:
    """A new audit job, or the one `--job-id` names resumed (its failed points asked again),
    and how its shards are sent: the producer feeds them (`wait`), a bounded number out."""
    points = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    meta = {"kind": AUDIT_KIND, "collection": request.collection, "plan": plan.model_dump(),
            "points": points, "shard_size": request.shard_size,
            "incremental": request.incremental}  # fmt: skip
    job_id = request.job_id or f"audit-{uuid.uuid4().hex[:12]}"
    if tracker.exists(job_id):
        known = tracker.progress(job_id)
        if not known.is_audit or known.meta.get("collection") != request.collection:
            raise AuditError(f"job {job_id} is no audit of {request.collection!r}")
        if known.meta.get("points") != points:
            raise AuditError(f"the points of {request.collection!r} changed since audit "
                             f"{job_id} started: start a new audit")  # fmt: skip
        meta = known.meta
        tracker.resume(job_id)
        tracker.forget_failures(job_id)
        tracker.set_fed(job_id, 0)  # from the start: the answered shards are skipped
    else:
        tracker.create(job_id, len(ids), meta)
    size = meta["shard_size"]
    return job_id, Sending(size, lambda todo: _send(job_id, meta["plan"], ids, size, todo))


def _send(job_id: str, plan: dict, ids: list[str], size: int, todo: list[list[int]]) -> None:
    """These rows, a message per shard they belong to: a shard's result is kept under its
    number, so that one sent again replaces its earlier answer."""
    rows = sorted({row for shard in todo for row in shard})
    with senders.connection() as producer:
        for shard, group in groupby(rows, key=lambda row: row // size):
            members = list(group)
            shard_ids = [ids[row] for row in members]
            senders.send_audit_shard(job_id, plan, shard, members, shard_ids, producer)


def _pairwise(
    reader: Reader, collection: str, clusters: list[audit.Cluster]
) -> list[audit.Cluster]:
    """Each cluster with its members' lowest cosine over every pair of them; their vectors read
    `_VECTORS_PAGE` at a time (one call per cluster was most of a 100,000-point merge)."""
    ids = [m.id for c in clusters for m in c.members]
    vectors = {}
    for start in range(0, len(ids), _VECTORS_PAGE):
        found = reader.retrieve(collection, ids[start : start + _VECTORS_PAGE], True)
        vectors.update((hit["id"], hit["vector"]) for hit in found)
    return [
        audit.pairwise(c, np.array([vectors[m.id] for m in c.members], dtype=np.float64))
        if all(m.id in vectors for m in c.members)
        else c  # a member deleted meanwhile: the links' minimum stands
        for c in clusters
    ]
