"""The store cut off (another process holds a collection's shard) under the system tier's
`medindex up`: writes retried with backoff until it returns, parked past the retry budget and
written by `medindex retry`, a store call whose caller gave up refused rather than run late, and
an outage longer than the visibility timeout that parks each point once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import qdrant_edge
from jobs import (
    AS_INGEST_MAKES_IT,
    N_SMALL,
    assert_all_indexed,
    finish,
    locked_store,
    log,
    logged,
    point_message,
    send_points,
    start_ingest,
    wait_for,
    wait_for_log,
)
from kombu import Connection
from support import ARTIFACTS, free_port, png, write_table

from pipeline import fingerprint
from pipeline.messages import STORE_MANAGE_TASK, UNACKED, UPSERT_QUEUE
from pipeline.progress import JobTracker, connect_redis
from pipeline.settings import Settings, get_settings
from pipeline.store import Admin, StoreError
from pipeline.store.remote import RemoteAdmin
from producers.harness import RunningStack, run_medindex, start_stack


def test_writes_to_an_unavailable_store_are_retried_until_it_returns(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
) -> None:
    store.ensure_collection("outage", AS_INGEST_MAKES_IT)
    failed_tries = log(stack).count("points failed (try 1)")
    with locked_store("outage"):
        ingest = start_ingest(stack, small, "outage", "outage")
        deadline = time.monotonic() + 120
        while log(stack).count("points failed (try 1)") == failed_tries:
            assert time.monotonic() < deadline, "the write never failed"
            time.sleep(0.2)
        progress = tracker.progress("outage")
        assert progress.indexed == 0 and progress.failed == 0
    # Back before the retry budget (15 s) ran out: the write went through, nothing failed.
    assert_all_indexed(finish(ingest), store, "outage", small)


def test_a_store_call_whose_caller_gave_up_is_refused_not_run_late(
    stack: RunningStack, tracker: JobTracker, store: Admin
) -> None:
    """Issue 21, item 7: the store worker runs one call at a time, so a management call waits
    behind a write that retries; its caller gives up, yet it used to run once the write ended
    (a reindex's delete after the reindex had failed). It carries its deadline now, and past it
    the store worker refuses it."""
    store.ensure_collection("late_victim", {"dim": 4})
    store.ensure_collection("late_write", AS_INGEST_MAKES_IT)
    tracker.create("late", 16, {"collection": "late_write"})
    impatient = RemoteAdmin(get_settings().model_copy(update={"store_call_timeout_s": 2}))
    failed_tries = log(stack).count("points failed (try 1)")
    # Dropped by the store worker if it took the call in time and reached it late, or by
    # Celery if the call reached the store worker after it expired.
    dropped = (
        "store call delete_collection refused: its caller gave up",
        f"Discarding revoked task: {STORE_MANAGE_TASK}[",
    )
    dropped_before = logged(stack, dropped)
    with locked_store("late_write"):
        send_points(point_message("late", "late_write", range(16)))
        wait_for_log(stack, "points failed (try 1)", failed_tries)  # the store worker is busy
        with pytest.raises(StoreError, match="no store worker answered within 2s"):
            impatient.delete_collection("late_victim")
    wait_for(tracker, "late", lambda p: p.indexed == 16)  # the write went through
    wait_for_log(stack, dropped, dropped_before)
    assert "late_victim" in store.collections()


def test_writes_failing_past_the_budget_are_kept_shown_failed_and_retried(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
) -> None:
    store.ensure_collection("long_outage", AS_INGEST_MAKES_IT)
    with locked_store("long_outage"):
        # Every image failed: the ingest says so by its exit code (issue 25).
        summary = finish(start_ingest(stack, small, "long_outage", "long-outage"), exit_code=1)
        assert (summary["indexed"], summary["failed"]) == (0, N_SMALL)
    report = stack.medindex("report", "long-outage", "--json").json()
    assert len(report["failures"]) == N_SMALL
    assert all(
        "store unavailable" in f["reason"] and "medindex retry long-outage" in f["reason"]
        for f in report["failures"]
    )
    retried = stack.medindex("retry", "long-outage", "--json")
    assert retried.returncode == 0, retried.stderr
    assert_all_indexed(retried.json(), store, "long_outage", small)
    assert tracker.parked("long-outage") == []


# --- an outage longer than the visibility timeout, on a stack of its own ----------------------

VISIBILITY_S = 32
# Half of it, the most settings allow. The retry delays (0.5, 1, 2, 4, 8 s) add up to 15.5 s, so
# a write whose budget counted from its own start would retry for 15.5 s.
RETRY_BUDGET_S = 16
OUTAGE_IMAGES = 128  # 8 jobs of 16: the four writes of 32 points that the store worker prefetches


def test_an_outage_longer_than_the_visibility_timeout_parks_each_point_once(
    base_env: dict, tmp_path: Path
) -> None:
    """A stack of its own: a 32 s visibility timeout and writes of 32 points, so the store worker
    prefetches four writes' worth of messages (as in production) and holds them all while the
    first write retries. Each message must be parked (its budget counted from its arrival)
    before Redis would hand it out again: no message overdue, every point parked once.

    Budgets counted from each write's start would end the four writes 15.5, 31, 46.5 and 62 s
    after their messages arrived: the last two writes' messages are handed out again while
    still buffered, and their points parked twice."""
    env = base_env | {
        "MEDINDEX_HOME": str(tmp_path / "home"),
        "MEDINDEX_LOCAL_REDIS_PORT": str(free_port()),
        "MEDINDEX_FLOWER_PORT": "0",
        "MEDINDEX_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "MEDINDEX_STORE_RETRY_BUDGET_S": str(RETRY_BUDGET_S),
        "MEDINDEX_UPSERT_BATCH_SIZE": "32",
    }
    settings = Settings(
        home=tmp_path / "home", local_redis_port=int(env["MEDINDEX_LOCAL_REDIS_PORT"])
    )
    data = write_table(
        tmp_path / "data",
        {
            "image": [png(i) for i in range(OUTAGE_IMAGES)],
            "image_id": [f"o{i}" for i in range(OUTAGE_IMAGES)],
        },
        {"image": datasets.Image(), "image_id": datasets.Value("string")},
    )
    up = start_stack(env, ARTIFACTS / "short-stack.log")
    try:
        # As ingest makes it (its payload index in place): the producer needs nothing from
        # the store the test is about to lock.
        spec = {"dim": 384, "payload_indexes": {"image_id": "keyword"} | fingerprint.INDEXES}
        make = f"open_store(get_settings()).ensure_collection('outage', {spec!r})"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from pipeline.store import open_store; from "
                f"pipeline.settings import get_settings; {make}",
            ],
            env=env,
            check=True,
            timeout=120,
        )  # fmt: skip  (this process' Celery app talks to the session's broker)
        shard_path = settings.embedded_store_path / "collections" / "outage" / "shard"
        shard = qdrant_edge.EdgeShard.load(str(shard_path))  # the store is out from here
        try:
            outage_ends = time.monotonic() + VISIBILITY_S + 5
            result = run_medindex(
                "ingest", "--dataset", str(data), "--collection", "outage", "--job-id", "outage",
                "--no-wait", "--json", env=env, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-2000:]
            overdue, rows = follow_outage(settings.broker_url, "outage", outage_ends)
        finally:
            shard.close()
        twice = len(rows) - len(set(rows))
        assert not overdue and not twice and sorted(rows) == list(range(OUTAGE_IMAGES)), (
            f"{overdue} messages stayed unacknowledged past the {VISIBILITY_S} s visibility "
            f"timeout and were handed out again; {twice} points parked twice; "
            f"{len(set(rows))} of {OUTAGE_IMAGES} parked"
        )
        tracker = JobTracker(connect_redis(settings.broker_url))
        assert tracker.redis.hlen(UNACKED) == 0
        assert tracker.progress("outage").failed == OUTAGE_IMAGES  # parked: failed, with why
    finally:
        up.stop()


def follow_outage(broker_url: str, job_id: str, outage_ends: float) -> tuple[int, list[int]]:
    """Every second, hand overdue messages out again with kombu's own sweep, until the outage
    has lasted to `outage_ends`, every row is parked and no message is left (or a row is parked
    twice, or 180 s passed). Returns how many deliveries were overdue and the parked rows.

    Once a message was handed out again, Redis cannot tell when the worker is done with it:
    acknowledging the first delivery also removes the second's entry, still buffered. So an
    overdue message is followed to its second parking (or the time limit).

    A worker sweeps only about every 100 s (kombu's `unacked_restore_interval` times
    `unacked_restore_throttle`); sweeping every second, as another consumer could, hands an
    overdue message out again as soon as the visibility timeout allows."""
    tracker = JobTracker(connect_redis(broker_url))
    overdue: set[str] = set()
    gives_up = time.monotonic() + 180
    options = {"visibility_timeout": VISIBILITY_S}
    with Connection(broker_url, transport_options=options) as broker:
        qos = broker.default_channel.qos
        while True:
            late = time.time() - VISIBILITY_S
            overdue.update(tracker.redis.zrangebyscore(qos.unacked_index_key, "-inf", late))
            qos.restore_visible(interval=1)
            batches = [json.loads(batch) for batch in tracker.parked(job_id)]
            rows = [row for batch in batches for row in batch["rows"]]
            idle = not tracker.redis.hlen(UNACKED) and not tracker.redis.llen(UPSERT_QUEUE)
            parked_all = len(set(rows)) == OUTAGE_IMAGES
            settled = idle and parked_all and not overdue and time.monotonic() > outage_ends
            if settled or len(rows) > len(set(rows)) or time.monotonic() > gives_up:
                return len(overdue), rows
            time.sleep(1)
