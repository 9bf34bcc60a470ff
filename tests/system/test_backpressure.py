"""Issue 23, item 5: an ingest keeps at most `max_queued_jobs` of its messages out (queued, or
delivered and not acknowledged), sending the next jobs as these finish; a cancel, a resume and
a retry keep their meaning under that bound."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs import wait_for, write_failing_first, write_points

from pipeline.messages import AUDIT_TASK, EMBED_QUEUE, EMBED_TASK, messages_in_flight
from pipeline.progress import JobTracker
from pipeline.store import Admin
from producers.drills.chaos import fix_bad_images
from producers.harness import Result, RunningStack
from search_api import SearchClient

BOUND = 4
N = 160  # 10 jobs of 16: several times the bound


@contextmanager
def peak_depth(
    tracker: JobTracker, job_id: str, task: str = EMBED_TASK
) -> Iterator[dict[str, int]]:
    """Sampled every few milliseconds while the block runs: the most messages of the job out
    at once (of its `task`, and all: a job that became points is briefly both), and the
    longest the embed queue was."""
    peaks = {"jobs": 0, "all": 0, "embed_queue": 0, "samples": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            jobs = messages_in_flight(tracker.redis, task)[job_id]
            out = messages_in_flight(tracker.redis)[job_id]
            depth = tracker.redis.llen(EMBED_QUEUE)
            for name, value in (("jobs", jobs), ("all", out), ("embed_queue", depth)):
                peaks[name] = max(peaks[name], value)
            peaks["samples"] += 1
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def test_an_ingest_keeps_its_queue_bounded_through_cancel_resume_and_retry(
    stack: RunningStack, tmp_path: Path, tracker: JobTracker
) -> None:
    data, bad = write_failing_first(tmp_path, N)
    env = stack.env | {"MEDINDEX_MAX_QUEUED_JOBS": str(BOUND)}
    argv = ("--dataset", str(data), "--collection", "bounded", "--job-id", "bounded")

    with peak_depth(tracker, "bounded") as first:
        started = stack.medindex("ingest", *argv, "--no-wait", env=env)
        assert started.returncode == 0, started.stderr
        # Up to the bound: fewer while other messages are out (the producer's own store
        # calls are acknowledged just after they answer).
        queued = int(re.search(r"(\d+) jobs of 16 queued", started.stderr)[1])
        assert 0 < queued <= BOUND, started.stderr
        wait_for(tracker, "bounded", lambda progress: progress.done >= queued * 16)
        time.sleep(1)  # nothing follows the job: its first jobs only are done
        assert tracker.fed("bounded") == queued * 16
        assert tracker.progress("bounded").done == queued * 16
    assert stack.medindex("cancel", "bounded").returncode == 0

    with peak_depth(tracker, "bounded") as resumed:
        result = stack.medindex("ingest", *argv, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.json()["indexed"] == N - len(bad)
    assert resumed["samples"] > 100
    for peaks in (first, resumed):
        assert 0 < peaks["jobs"] <= BOUND and peaks["embed_queue"] <= BOUND, peaks
        assert 0 < peaks["all"] <= 2 * BOUND, peaks

    fix_bad_images(data, bad)
    retried = stack.medindex("retry", "bounded", "--json", env=env)
    assert retried.returncode == 0, retried.stderr
    progress = tracker.progress("bounded")
    assert (progress.indexed, progress.failed, progress.state) == (N, 0, "done")
    assert SearchClient().count("bounded") == N


def test_an_audit_keeps_its_shards_bounded_and_sends_lost_ones_again(
    stack: RunningStack, tracker: JobTracker, store: Admin
) -> None:
    """Issue 24 at scale: an audit's shards are fed like an ingest's jobs, at most
    `max_queued_jobs` out (15,625 were queued at once for a million points); shards lost from
    the queue are sent again once the audit stalls."""
    points, bound = 320, 16  # 80 shards of 4; the bound above the embed worker's prefetch
    write_points(store, tracker, "audited", points)
    env = stack.env | {"MEDINDEX_MAX_QUEUED_JOBS": str(bound), "MEDINDEX_RESEND_QUIET_S": "3"}
    argv = ("audit", "--collection", "audited", "--shard-size", "4", "--job-id", "fed-audit")
    finished: list[Result] = []

    def run() -> None:
        finished.append(stack.medindex(*argv, "--json", env=env))

    audit = threading.Thread(target=run)
    with peak_depth(tracker, "fed-audit", AUDIT_TASK) as peaks:
        audit.start()
        deadline = time.monotonic() + 60
        while tracker.redis.llen(EMBED_QUEUE) < 4:  # the worker has taken what it prefetches
            assert time.monotonic() < deadline and audit.is_alive(), "no shards queued"
            time.sleep(0.005)
        with tracker.redis.pipeline() as gone:  # as with a broker that lost them, in one step
            lost, _ = gone.llen(EMBED_QUEUE).delete(EMBED_QUEUE).execute()
        audit.join(timeout=240)
    assert finished and finished[0].returncode == 0, finished and finished[0].stderr
    assert finished[0].json()["points_audited"] == points
    assert tracker.progress("fed-audit").resent >= 4 * lost > 0
    assert peaks["samples"] > 100
    assert 0 < peaks["jobs"] <= bound and peaks["embed_queue"] <= bound, peaks
