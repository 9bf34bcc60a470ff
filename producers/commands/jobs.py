"""Jobs: `ingest`, `retry`, `report`, `status`, `cancel`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console

from pipeline.progress import JobTracker, connect_redis
from pipeline.settings import get_settings
from producers.commands import err
from producers.commands.follow import add_follow_flags, follow
from producers.commands.source_flags import add_source_flags, source_spec


def register_ingest(cmd: argparse.ArgumentParser) -> None:
    add_source_flags(cmd)
    cmd.add_argument("--collection", default=None, help="default: MEDINDEX_COLLECTION")
    cmd.add_argument("--job-id", default=None, help="a new id, or a known one to resume")
    cmd.add_argument(
        "--resume", action="store_true", help="continue the last unfinished job of this dataset"
    )
    cmd.add_argument(
        "--audit", action="store_true",
        help="once indexed, check the new points against the collection (`medindex audit`)",
    )  # fmt: skip
    add_follow_flags(cmd)
    cmd.set_defaults(run=_ingest)


def _ingest(args: argparse.Namespace) -> int:
    settings = get_settings()
    spec = source_spec(args, settings)  # the arguments checked before the slow imports
    from producers.ingest import IngestRequest, start_ingest  # datasets, qdrant-client: slow

    request = IngestRequest(
        spec=spec,
        collection=args.collection or settings.collection,
        job_id=args.job_id,
        resume=args.resume,
    )
    started = time.monotonic()
    job_id, total, enqueued = start_ingest(request, settings)
    size, collection = settings.job_size, request.collection
    err.print(
        f"job {job_id}: {total} images, {enqueued} jobs of {size} queued -> {collection} "
        f"(at most {settings.max_queued_jobs} at once: the rest as these finish)"
    )
    fed = JobTracker(connect_redis(settings.broker_url)).fed(job_id)
    if args.no_wait and fed is not None and fed < total:
        err.print(f"the rest is sent while the job is followed: medindex ingest --job-id {job_id}")
    code = follow(job_id, total, started, args)
    if args.audit and code == 0 and not args.no_wait:
        from producers.commands.audit import audit_after_ingest

        audit_after_ingest(collection)
    return code


def register_retry(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("job_id")
    add_follow_flags(cmd)
    cmd.set_defaults(run=_retry)


def _retry(args: argparse.Namespace) -> int:
    from producers.ingest import retry_failed  # datasets, qdrant-client: slow to import

    settings = get_settings()
    started = time.monotonic()
    images, points = retry_failed(args.job_id, settings)
    err.print(f"job {args.job_id}: {images} images to embed again, {points} parked points resent")
    progress = JobTracker(connect_redis(settings.broker_url)).progress(args.job_id)
    if progress.cancelled:
        skipped = progress.total - progress.done - progress.retrying
        err.print(
            f"job {args.job_id} stays cancelled: only its failed images were sent again; the "
            f"{skipped} its cancel skipped stay pending (`medindex ingest --job-id` resumes them)"
        )
    return follow(args.job_id, progress.total, started, args, retry=True)


def register_report(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("job_id")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    progress = tracker.progress(args.job_id)
    failures = tracker.failures(args.job_id)
    if args.json:
        summary = {
            "job_id": args.job_id,
            "total": progress.total,
            "embedded": progress.embedded,
            "indexed": progress.indexed,
            "failed": progress.failed,
            "resent_after_stall": progress.resent,
            "failures": failures,
            **progress.meta,
        }
        print(json.dumps(summary))
        return 0
    out = Console()
    out.print(
        f"job {args.job_id} -> {progress.meta.get('collection')}: {progress.indexed} indexed "
        f"({progress.embedded} embedded), "
        f"{progress.failed} failed, {progress.total - progress.done} pending of {progress.total}"
    )
    for failure in failures:
        key = "" if failure["key"] is None else f" {failure['key']}"
        out.print(f"  row {failure['row']}{key}: {failure['reason']}")
    sys.stdout.flush()
    return 0


def register_status(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("job_id", nargs="?", help="one job (default: the 10 newest)")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    from producers.status import collect

    status = collect(get_settings(), args.job_id)
    if args.json:
        print(json.dumps(status))
        return 0
    out = Console()
    queues = ", ".join(f"{name} {depth}" for name, depth in status["queues"].items())
    out.print(f"queues: {queues}; delivered but unacknowledged: {status['unacked']}")
    out.print(f"workers: {', '.join(status['workers']) or 'none answering'}")
    for job in status["jobs"]:
        eta = "-" if job["eta_s"] is None else f"{job['eta_s']:.0f}s"
        out.print(
            f"job {job['job_id']} -> {job['collection']}: {job['state']}, "
            f"{job['indexed']} indexed, {job['failed']} failed of {job['total']} "
            f"({job['embedded']} embedded), {job['images_per_s']:.1f} images/s, ETA {eta}"
        )
    return 0


def register_cancel(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("job_id")
    cmd.set_defaults(run=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    tracker.cancel(args.job_id)
    err.print(
        f"job {args.job_id} cancelled; `{tracker.progress(args.job_id).resumed_by}` resumes it"
    )
    return 0
