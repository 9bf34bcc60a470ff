"""Processes SIGKILLed under the system tier's `medindex up`: embed pool processes and whole
workers, the store worker with points buffered and after its writes, Redis mid-ingest. The
tier's stack hands a dead worker's jobs out again after 30 s (its visibility timeout); each test
ends by reading the store back: the exact set of image keys, each once."""

from __future__ import annotations

from pathlib import Path

import psutil
from jobs import (
    AS_INGEST_MAKES_IT,
    N_SMALL,
    assert_all_indexed,
    finish,
    locked_store,
    log,
    point_message,
    restarted,
    send_points,
    start_ingest,
    wait_for,
    wait_for_log,
)

from pipeline.messages import EMBED_QUEUE
from pipeline.progress import JobTracker
from pipeline.settings import get_settings
from pipeline.store import Admin
from producers.drills.chaos import kill_and_wait_for_restart
from producers.harness import RunningStack


def test_killed_embed_processes_are_replaced_and_their_jobs_delivered_again(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
) -> None:
    up = psutil.Process(stack.process.pid)
    before = restarted(stack, "embed")
    ingest = start_ingest(stack, small, "kill_embed", "kill-embed")
    wait_for(tracker, "kill-embed", lambda p: p.embedded >= 32)
    # A pool process dies holding a job: the worker sees it, the job is requeued at once.
    assert kill_and_wait_for_restart(up, "embed pool process")
    wait_for(tracker, "kill-embed", lambda p: p.embedded >= 96)
    # The whole worker dies holding a job: `up` restarts it, Redis hands the job out again
    # after the visibility timeout.
    assert kill_and_wait_for_restart(up, "embed worker")
    assert_all_indexed(finish(ingest), store, "kill_embed", small)
    assert restarted(stack, "embed") == before + 1


def test_points_buffered_in_a_killed_store_worker_are_written_after_its_restart(
    stack: RunningStack, medium: Path, tracker: JobTracker, store: Admin
) -> None:
    up = psutil.Process(stack.process.pid)
    ingest = start_ingest(stack, medium, "kill_store", "kill-store")
    at_kill = wait_for(tracker, "kill-store", lambda p: p.embedded >= 160)
    assert kill_and_wait_for_restart(up, "store worker")
    assert at_kill.indexed == 0  # every point made so far was only buffered
    assert_all_indexed(finish(ingest), store, "kill_store", medium)


def test_points_written_before_the_store_worker_is_killed_are_on_disk(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
) -> None:
    """A write acknowledged is on disk (Edge's write-ahead log, flushed before the store call
    returns and so before the acknowledgement): the store worker SIGKILLed right after the job
    is done, the shard reopened by its restart holds every point."""
    up = psutil.Process(stack.process.pid)
    summary = finish(start_ingest(stack, small, "durable", "durable"))
    assert kill_and_wait_for_restart(up, "store worker")
    assert_all_indexed(summary, store, "durable", small)


def test_redis_killed_mid_ingest_comes_back_from_its_append_only_file(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
) -> None:
    up = psutil.Process(stack.process.pid)
    ingest = start_ingest(stack, small, "redis_restart", "redis-restart")
    wait_for(tracker, "redis-restart", lambda p: p.embedded >= 48)
    queued = tracker.redis.llen(EMBED_QUEUE)
    assert queued > 0
    assert kill_and_wait_for_restart(up, "redis")
    assert tracker.progress("redis-restart").total == N_SMALL  # job state came back too
    # The producer's CLI rode out the restart; the store worker wrote what it buffered after
    # it, partial writes included (fewer points than one write of 1,000).
    assert_all_indexed(finish(ingest), store, "redis_restart", small)


def test_a_point_message_whose_write_keeps_failing_is_parked_after_its_tries(
    stack: RunningStack, tracker: JobTracker, store: Admin
) -> None:
    """Issue 21, item 2: a message whose write call fails (the call raised, or its process
    died) is sent again with its retries counted, as the embed step's jobs are; past
    MEDINDEX_UPSERT_MAX_RETRIES its points are parked with the reason instead of going round
    again. Here the message has used its retries, and the store worker's pool process is
    SIGKILLed in the middle of its write."""
    retries = get_settings().upsert_max_retries
    store.ensure_collection("tries", AS_INGEST_MAKES_IT)
    tracker.create("tries", 16, {"collection": "tries"})
    failed_tries = log(stack).count("points failed (try 1)")
    with locked_store("tries"):
        send_points(point_message("tries", "tries", range(16)), retries=retries)
        wait_for_log(stack, "points failed (try 1)", failed_tries)
        store_worker = next(p for p in psutil.Process(stack.process.pid).children()
                            if "upsert,store" in p.cmdline())  # fmt: skip
        store_worker.children()[0].kill()
        progress = wait_for(tracker, "tries", lambda p: p.failed == 16)
    assert progress.indexed == 0 and len(tracker.parked("tries")) == 1
    reasons = {f["reason"] for f in tracker.failures("tries")}
    assert reasons == {
        f"the write of these points failed {retries + 1} times (the call raised, or its process "
        "died); points kept, `medindex retry tries` writes them"
    }
