"""Nothing lost, nothing doubled, on the session's stack: poisonous images and unwritable point
messages fail alone, a job delivered twice or lost on the way leaves each image once, and the
delivery settings are the safe ones. (Processes killed and the store cut off: tests/system.)
Each test ends by reading the store back: the exact set of image keys, each once.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import yaml
from jobs import (
    AS_INGEST_MAKES_IT,
    N_SMALL,
    assert_all_indexed,
    assert_exactly_indexed,
    dataset_keys,
    finish,
    log,
    point_message,
    scroll_all,
    send_points,
    start_ingest,
)
from support import ROOT, sample_dataset

from pipeline.celery_app import app
from pipeline.messages import EMBED_TASK
from pipeline.progress import JobTracker
from pipeline.schemas import SourceRef
from pipeline.settings import Settings, get_settings
from pipeline.sources import resolve
from pipeline.store import Admin
from producers.drills.chaos import fix_bad_images, write_laced_dataset
from producers.harness import RunningStack
from producers.ingest import enqueue, wait

# --- poisonous and odd inputs -------------------------------------------------------------


def test_bad_images_fail_alone_with_their_reason_and_are_indexed_once_fixed(
    stack: RunningStack, tmp_path: Path, store: Admin
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
    stack: RunningStack, tmp_path: Path, tracker: JobTracker, store: Admin
) -> None:
    """Issue 21, item 2: one point message that cannot be written raised in every write call
    it joined (or in the consumer's flush, for one without ids) and came back with the good
    messages beside it forever: nothing was indexed. Each is now refused when it arrives, its
    rows failed with the reason, and the images beside it are indexed."""
    data = sample_dataset(tmp_path / "beside", 32, seed=13)
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


# --- duplicate delivery ---------------------------------------------------------------------


def test_a_job_delivered_twice_leaves_the_same_points(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
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


def vectors(store: Admin, collection: str) -> list[dict]:
    ids = [p["id"] for p in scroll_all(store, collection)]
    return store.retrieve(collection, ids, with_vectors=True)


# --- a message lost on the way -----------------------------------------------------------------


def test_a_job_whose_messages_vanished_is_sent_again_once_it_stalls(
    stack: RunningStack, small: Path, tracker: JobTracker, store: Admin
) -> None:
    """Every message of a job lost (as a broker killed before its append-only file held them
    would lose them): the producer's wait sees no progress with nothing queued, and re-sends."""
    settings = get_settings()
    ref = resolve(str(small))
    meta = {"collection": "stalled", "dataset": ref.dataset, "split": ref.split,
            "source_name": ref.identity, "model": settings.model, "pooling": "mean"}  # fmt: skip
    store.ensure_collection("stalled", {"dim": 384})  # as ingest makes it, before the job
    tracker.create("stalled", N_SMALL, meta)
    tracker.set_fed("stalled", N_SMALL)  # every job sent, and none reached the queue
    impatient = settings.model_copy(update={"resend_quiet_s": 2})
    final = wait(tracker, "stalled", lambda _: None, timeout_s=120, settings=impatient)
    assert final.resent == N_SMALL
    assert_all_indexed({"indexed": final.indexed, "failed": final.failed}, store, "stalled", small)


# --- safe defaults --------------------------------------------------------------------------


def test_delivery_settings() -> None:
    """A dead worker's jobs come back within minutes, not Redis's hour; a live one keeps its
    job (600 s is far above a 16-image job: about 1 s on CPU), and writes end before that."""
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["visibility_timeout_s"] == 600
    assert defaults["store_retry_budget_s"] <= defaults["visibility_timeout_s"] / 2
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] == 240  # this session's


def test_workers_refuse_pickle(stack: RunningStack) -> None:
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
