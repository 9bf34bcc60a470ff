"""A job's live progress bar, and following a job to its end: shared by `ingest`, `retry` and
`reindex`."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as ProgressBar
from rich.text import Text

from pipeline.progress import JobTracker, Progress, connect_redis
from pipeline.settings import get_settings
from producers.commands import err


def add_follow_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--no-wait", action="store_true", help="enqueue and return")
    cmd.add_argument("--timeout", type=float, default=None, help="stop waiting after SECONDS")
    cmd.add_argument("--json", action="store_true", help="last line: a JSON summary")


def follow(
    job_id: str, total: int, started: float, args: argparse.Namespace, retry: bool = False
) -> int:
    """Show a job's progress until it ends; exit 0 only when every image is indexed or failed
    (a retry of a cancelled job: every image it sent again)."""
    from producers.ingest import index_after_ingest, wait  # celery, qdrant-client: slow

    if args.no_wait:
        print(json.dumps({"job_id": job_id, "images": total}) if args.json else job_id)
        return 0
    settings = get_settings()
    tracker = JobTracker(connect_redis(settings.broker_url))
    with progress_bar(f"job {job_id}", total) as show:
        try:
            final = wait(tracker, job_id, show, timeout_s=args.timeout, settings=settings)
        except KeyboardInterrupt:
            err.print(f"stopped waiting; job {job_id} goes on: `medindex report {job_id}`")
            return 130
    seconds = time.monotonic() - started
    if final.finished and final.indexed:
        index_after_ingest(final.meta["collection"], settings)
    rate = final.indexed / seconds if seconds else 0.0
    err.print(
        f"job {job_id}: {final.indexed} indexed, {final.failed} failed of {final.total} "
        f"in {seconds:.1f}s ({rate:.1f} images/s)"
        + (f"; details: medindex report {job_id}" if final.failed else "")
    )
    if args.json:
        summary = {
            "job_id": job_id,
            "indexed": final.indexed,
            "failed": final.failed,
            "seconds": round(seconds, 3),
        }
        print(json.dumps(summary))
    if final.failed:
        err.print(failure_summary(tracker, final))
    if final.cancelled:
        err.print(f"job {job_id} was cancelled")
    if final.state == "failed":  # not one image indexed: nothing of it can be searched
        return 1
    return 0 if final.done >= final.total or (retry and final.finished) else 1


def failure_summary(tracker: JobTracker, progress: Progress, sample: int = 500) -> str:
    """The commonest reasons among a job's failures (of a sample, for a large job)."""
    reasons = Counter(f["reason"] for f in tracker.failure_sample(progress.job_id, sample))
    common = "; ".join(f"{count}x {reason}" for reason, count in reasons.most_common(3))
    more = f"; {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    every = "every image" if progress.state == "failed" else f"{progress.failed} images"
    return f"{every} failed: {common}{more}"


@contextmanager
def progress_bar(title: str, total: int | None) -> Iterator[Callable[[Progress], None]]:
    """A live bar on stderr; yields the function that shows a job's progress on it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("indexed ({task.fields[embedded]} embedded)"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with ProgressBar(*columns, console=err) as bar:
        task = bar.add_task(title, total=total, embedded=0)

        def show(progress: Progress) -> None:
            done, embedded = progress.done, progress.embedded
            bar.update(task, total=progress.total, completed=done, embedded=embedded)

        yield show


class RateColumn(ProgressColumn):
    def render(self, task: object) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:.1f} images/s")
