"""Nothing lost, nothing doubled: real processes SIGKILLed under the session's `medindex up`,
the real embedded store locked, real bad files. Each test ends by reading the store back: the
exact set of image keys, each once.

The session runs with a 90 s visibility timeout (conftest), so a dead worker's jobs come back
in about a minute and a half; production keeps the 600 s default (`test_delivery_settings`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest
import qdrant_edge
import yaml
from conftest import Stack

from pipeline.celery_app import app
from pipeline.errors import MedindexError
from pipeline.messages import EMBED_QUEUE, EMBED_TASK, UPSERT_TASK
from pipeline.progress import JobTracker, Progress, connect_redis
from pipeline.samples import skin, write_sample_dataset
from pipeline.schemas import EmbedJob, PointBatch, SourceRef, point_id
from pipeline.settings import Settings, get_settings
from pipeline.sources import resolve
from pipeline.store import StoreError, open_store
from pipeline.store.remote import RemoteAdmin
from producers.drills.chaos import (
    fix_bad_images,
    indexed_keys,
    kill_and_wait_for_restart,
    write_laced_dataset,
)
from producers.ingest import enqueue, wait

ROOT = Path(__file__).resolve().parent.parent
N_SMALL = 240
N_BUFFERED = 480  # under one write of 1,000: the store worker holds them until a quiet moment


# A collection made the way ingest makes it for the skin sample (its payload indexes in place):
# an ingest into it during an outage needs nothing from the locked store before its writes.
AS_INGEST_MAKES_IT = {"dim": 384, "payload_indexes": skin.payload_indexes()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("resilience") / "small", N_SMALL, 11)


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("resilience") / "medium", N_BUFFERED, 12)


@pytest.fixture(scope="module")
def tracker() -> JobTracker:
    return JobTracker(connect_redis(get_settings().broker_url))


@pytest.fixture(scope="module")
def store(stack: Stack) -> object:
    return open_store(get_settings())


# --- helpers ------------------------------------------------------------------------------


def start_ingest(stack: Stack, dataset: Path, collection: str, job_id: str) -> subprocess.Popen:
    """`medindex ingest` as a user runs it, in the background while the test breaks things."""
    argv = ["ingest", "--dataset", str(dataset), "--collection", collection, "--job-id", job_id]
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv, "--json"],
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(ingest: subprocess.Popen, timeout_s: float = 300) -> dict:
    out, err = ingest.communicate(timeout=timeout_s)
    assert ingest.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def wait_for(
    tracker: JobTracker, job_id: str, ready: Callable[[Progress], bool], timeout_s: float = 120
) -> Progress:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(MedindexError):  # not created yet by the CLI
            progress = tracker.progress(job_id)
            if ready(progress):
                return progress
        time.sleep(0.05)
    pytest.fail(f"job {job_id}: condition not reached in {timeout_s:.0f}s")


def assert_all_indexed(summary: dict, store: object, collection: str, dataset: Path) -> None:
    """The ingest's own summary and the store read back agree: every image, once."""
    keys = dataset_keys(dataset)
    assert (summary["indexed"], summary["failed"]) == (len(keys), 0)
    assert_exactly_indexed(store, collection, keys)


def assert_exactly_indexed(store: object, collection: str, expected: set[str]) -> None:
    keys = indexed_keys(store, collection)
    assert len(keys) == len(set(keys)), "a point was written twice"
    assert set(keys) == expected


def dataset_keys(dataset: Path) -> set[str]:
    return set(datasets.load_dataset(str(dataset), split="train")["image_id"])


def restarted(stack: Stack, name: str) -> int:
    return len(re.findall(rf"medindex up: {name} exited with code -9; restarted", log(stack)))


def log(stack: Stack) -> str:
    return stack.log.read_text(errors="replace")


def point_message(job_id: str, collection: str, rows: range) -> dict:
    """What the embed step sends for a job's rows: 384-d points keyed `{job_id}-{row}`."""
    ref = SourceRef(dataset=job_id, name=job_id)
    job = EmbedJob(job_id=job_id, collection=collection, source=ref, model="m", rows=list(rows))
    keys = [f"{job_id}-{row}" for row in rows]
    ids = [point_id(job_id, "train", key) for key in keys]
    payloads = [{"image_id": key, "source": {"key": key}} for key in keys]
    vectors = np.random.default_rng(rows[0]).normal(size=(len(rows), 384)).astype(np.float32)
    batch = PointBatch.build(job, ids, list(rows), payloads, vectors)
    return {"batch": batch.model_dump(), "ends_job": True}


def send_points(message: dict, **options: object) -> None:
    """Sent as the embed step sends it, as it stands (a test may send a malformed one)."""
    app.send_task(UPSERT_TASK, kwargs=message, argsrepr="()", kwargsrepr="test points", **options)


def wait_for_log(stack: Stack, text: str, seen_before: int, timeout_s: float = 60) -> None:
    """Until `text` appears in the stack's log once more than `seen_before` times."""
    deadline = time.monotonic() + timeout_s
    while log(stack).count(text) <= seen_before:
        assert time.monotonic() < deadline, f"{text!r} not logged again in {timeout_s:.0f}s"
        time.sleep(0.1)


@contextmanager
def locked_store(collection: str) -> Iterator[None]:
    """Another process holds the collection's shard (the store worker has not opened it since
    creating it): every write fails as an outage until it lets go."""
    path = get_settings().embedded_store_path / "collections" / collection / "shard"
    shard = qdrant_edge.EdgeShard.load(str(path))
    try:
        yield
    finally:
        shard.close()


# --- 1. an embed worker killed mid-job -----------------------------------------------------


def test_killed_embed_processes_are_replaced_and_their_jobs_delivered_again(
    stack: Stack, small: Path, tracker: JobTracker, store: object
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


# --- 2. the upsert worker killed with points buffered ---------------------------------------


def test_points_buffered_in_a_killed_store_worker_are_written_after_its_restart(
    stack: Stack, medium: Path, tracker: JobTracker, store: object
) -> None:
    up = psutil.Process(stack.process.pid)
    ingest = start_ingest(stack, medium, "kill_store", "kill-store")
    at_kill = wait_for(tracker, "kill-store", lambda p: p.embedded >= 160)
    assert kill_and_wait_for_restart(up, "store worker")
    assert at_kill.indexed == 0  # every point made so far was only buffered
    assert_all_indexed(finish(ingest), store, "kill_store", medium)


def test_points_written_before_the_store_worker_is_killed_are_on_disk(
    stack: Stack, small: Path, tracker: JobTracker, store: object
) -> None:
    """A write acknowledged is on disk (Edge's write-ahead log, flushed before the store call
    returns and so before the acknowledgement): the store worker SIGKILLed right after the job
    is done, the shard reopened by its restart holds every point."""
    up = psutil.Process(stack.process.pid)
    summary = finish(start_ingest(stack, small, "durable", "durable"))
    assert kill_and_wait_for_restart(up, "store worker")
    assert_all_indexed(summary, store, "durable", small)


# --- 3. the store unavailable ---------------------------------------------------------------


def test_writes_to_an_unavailable_store_are_retried_until_it_returns(
    stack: Stack, small: Path, tracker: JobTracker, store: object
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
    stack: Stack, tracker: JobTracker, store: object
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
    with locked_store("late_write"):
        send_points(point_message("late", "late_write", range(16)))
        wait_for_log(stack, "points failed (try 1)", failed_tries)  # the store worker is busy
        with pytest.raises(StoreError, match="no store worker answered within 2s"):
            impatient.delete_collection("late_victim")
    wait_for(tracker, "late", lambda p: p.indexed == 16)  # the write went through
    # Answered after the late call (one store worker, one call at a time, in order).
    assert "late_victim" in store.collections()
    assert "store call delete_collection refused: its caller gave up" in log(stack)


def test_writes_failing_past_the_budget_are_kept_shown_failed_and_retried(
    stack: Stack, small: Path, tracker: JobTracker, store: object
) -> None:
    store.ensure_collection("long_outage", AS_INGEST_MAKES_IT)
    with locked_store("long_outage"):
        summary = finish(start_ingest(stack, small, "long_outage", "long-outage"))
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


# --- 4. Redis restarted mid-ingest -------------------------------------------------------------


def test_redis_killed_mid_ingest_comes_back_from_its_append_only_file(
    stack: Stack, small: Path, tracker: JobTracker, store: object
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


# --- 5. poisonous and odd inputs -------------------------------------------------------------


def test_bad_images_fail_alone_with_their_reason_and_are_indexed_once_fixed(
    stack: Stack, tmp_path: Path, store: object
) -> None:
    data, bad = write_laced_dataset(tmp_path, 48, seed=3)
    everything = dataset_keys(data)
    summary = finish(start_ingest(stack, data, "laced", "laced"))
    assert (summary["indexed"], summary["failed"]) == (len(everything) - len(bad), len(bad))
    assert_exactly_indexed(store, "laced", everything - bad.keys())

    report = stack.medindex("report", "laced", "--json")
    assert report.returncode == 0, report.stderr
    reasons = {f["key"]: f["reason"] for f in report.json()["failures"]}
    assert reasons.keys() == bad.keys()
    for key, reason in bad.items():
        assert re.search(reason, reasons[key]), (key, reasons[key])

    points = {p["payload"]["image_id"]: p["payload"] for p in scroll_all(store, "laced")}
    assert "age" not in points["odd_nan_age"] and "age" not in points["odd_no_age"]
    assert points["odd_sex"]["sex"] == "intersex/other"

    fix_bad_images(data, bad)
    retried = stack.medindex("retry", "laced", "--json")
    assert retried.returncode == 0, retried.stderr
    assert (retried.json()["indexed"], retried.json()["failed"]) == (len(everything), 0)
    assert_exactly_indexed(store, "laced", everything)


def test_unwritable_point_messages_fail_alone_and_the_rest_is_written(
    stack: Stack, tmp_path: Path, tracker: JobTracker, store: object
) -> None:
    """Issue 21, item 2: one point message that cannot be written raised in every write call
    it joined (or in the consumer's flush, for one without ids) and came back with the good
    messages beside it forever: nothing was indexed. Each is now refused when it arrives, its
    rows failed with the reason, and the images beside it are indexed."""
    data = write_sample_dataset(tmp_path / "beside", 32, seed=13)
    store.ensure_collection("beside_bad", AS_INGEST_MAKES_IT)
    tracker.create("bad-points", 64, {"collection": "beside_bad"})
    bad = [point_message("bad-points", "beside_bad", range(at, at + 16)) for at in (0, 16, 32, 48)]
    bad[0]["batch"]["dim"] = 383  # 16 x 384 floats
    del bad[1]["batch"]["ids"]
    bad[2]["batch"]["vectors"] = np.full((16, 384), np.nan, np.float32).tobytes()
    bad[3]["batch"]["payloads"].pop()
    for message in [*bad, {"batch": "no batch at all"}]:
        send_points(message)
    assert_all_indexed(finish(start_ingest(stack, data, "beside_bad", "beside-bad"), 120),
                       store, "beside_bad", data)  # fmt: skip
    reasons = {f["row"]: f["reason"] for f in tracker.failures("bad-points")}
    assert sorted(reasons) == list(range(64))
    for rows, why in zip(range(0, 64, 16), ("vectors", "ids", "NaN", "payloads"), strict=True):
        assert all(why in reasons[row] for row in range(rows, rows + 16)), reasons[rows]
    assert "holds no point batch, dropped" in log(stack)


def test_a_point_message_whose_write_keeps_failing_is_parked_after_its_tries(
    stack: Stack, tracker: JobTracker, store: object
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


def scroll_all(store: object, collection: str) -> list[dict]:
    points, offset = [], None
    while True:
        page = store.scroll(collection, limit=256, offset=offset)
        points += page["points"]
        if (offset := page["next_offset"]) is None:
            return points


# --- 6. duplicate delivery ---------------------------------------------------------------------


def test_a_job_delivered_twice_leaves_the_same_points(
    stack: Stack, small: Path, tracker: JobTracker, store: object
) -> None:
    assert finish(start_ingest(stack, small, "twice", "twice"))["indexed"] == N_SMALL
    before = {p["id"]: p["vector"] for p in vectors(store, "twice")}
    meta = tracker.progress("twice").meta
    source = SourceRef(dataset=meta["dataset"], split=meta["split"])
    enqueue("twice", "twice", source, meta["model"], meta["pooling"], [list(range(16))] * 2)
    deadline = time.monotonic() + 60
    while points_written(tracker, "twice") < N_SMALL + 32:
        assert time.monotonic() < deadline, "the jobs delivered again were not written"
        time.sleep(0.2)
    after = {p["id"]: p["vector"] for p in vectors(store, "twice")}
    assert after.keys() == before.keys()
    ids = sorted(before)
    np.testing.assert_allclose([after[i] for i in ids], [before[i] for i in ids], atol=1e-5)


def points_written(tracker: JobTracker, collection: str) -> int:
    return sum(w["points"] for w in tracker.recent_writes() if w["collection"] == collection)


def vectors(store: object, collection: str) -> list[dict]:
    ids = [p["id"] for p in scroll_all(store, collection)]
    return store.retrieve(collection, ids, with_vectors=True)


# --- a message lost on the way -----------------------------------------------------------------


def test_a_job_whose_messages_vanished_is_sent_again_once_it_stalls(
    stack: Stack, small: Path, tracker: JobTracker, store: object
) -> None:
    """Every message of a job lost (as a broker killed before its append-only file held them
    would lose them): the producer's wait sees no progress with nothing queued, and re-sends."""
    settings = get_settings()
    ref = resolve(str(small))
    meta = {"collection": "stalled", "dataset": ref.dataset, "split": ref.split,
            "source_name": ref.identity, "model": settings.model, "pooling": "mean"}  # fmt: skip
    store.ensure_collection("stalled", {"dim": 384})  # as ingest makes it, before the job
    tracker.create("stalled", N_SMALL, meta)  # created, but nothing reached the queue
    impatient = settings.model_copy(update={"resend_quiet_s": 2})
    final = wait(tracker, "stalled", lambda _: None, timeout_s=120, settings=impatient)
    assert final.resent == N_SMALL
    assert_all_indexed({"indexed": final.indexed, "failed": final.failed}, store, "stalled", small)


# --- 7. safe defaults --------------------------------------------------------------------------


def test_delivery_settings() -> None:
    """A dead worker's jobs come back within minutes, not Redis's hour; a live one keeps its
    job (600 s is far above a 16-image job: about 1 s on CPU), and writes end before that."""
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["visibility_timeout_s"] == 600
    assert defaults["store_retry_budget_s"] <= defaults["visibility_timeout_s"] / 2
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] == 90  # this session's


def test_workers_refuse_pickle(stack: Stack) -> None:
    assert "pickle" not in app.conf.accept_content
    app.send_task(EMBED_TASK, kwargs={"job": {}}, serializer="pickle")
    deadline = time.monotonic() + 30
    while "Refusing to deserialize untrusted content of type pickle" not in log(stack):
        assert time.monotonic() < deadline, "a pickled message was not refused"
        time.sleep(0.2)


def test_compose_redis_needs_a_password_and_is_not_published() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis_service = compose["services"]["redis"]
    assert "--requirepass ${REDIS_PASSWORD:?" in redis_service["command"]
    assert "ports" not in redis_service
    assert "appendonly yes" in (ROOT / "deploy" / "redis.conf").read_text()
    text = json.dumps(compose)
    assert "MEDINDEX_QDRANT_API_KEY" in text and "QDRANT__SERVICE__API_KEY" in text
    assert "FLOWER_BASIC_AUTH" in text
