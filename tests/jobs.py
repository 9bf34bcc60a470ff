"""Jobs through a session stack, as the stacked tiers' tests drive them: an ingest in the
background, waits on a job's state, the store read back (every image once), point messages as
the embed step sends them, and the store cut off. Fixtures here are imported by the tiers'
conftests."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import datasets
import numpy as np
import pytest
import qdrant_edge
from PIL import Image
from support import sample_dataset

from pipeline import fingerprint
from pipeline.celery_app import app
from pipeline.errors import MedindexError
from pipeline.messages import UPSERT_TASK
from pipeline.progress import PREFIX, JobTracker, Progress, connect_redis
from pipeline.samples import skin
from pipeline.samples.bad_images import bad_images
from pipeline.schemas import EmbedJob, PointBatch, SourceRef, point_id
from pipeline.settings import get_settings
from pipeline.store import Admin, open_store
from pipeline.store.points import every_point
from producers.drills.chaos import indexed_keys
from producers.harness import RunningStack

N_SMALL = 240
N_BUFFERED = 480  # under one write of 1,000: the store worker holds them until a quiet moment


# A collection made the way ingest makes it for the skin sample (its payload indexes in place):
# an ingest into it during an outage needs nothing from the locked store before its writes.
# The schema's indexes and the audit's fingerprints: the producer then needs nothing of the store.
AS_INGEST_MAKES_IT = {"dim": 384, "payload_indexes": skin.payload_indexes() | fingerprint.INDEXES}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_dataset(tmp_path_factory.mktemp("resilience") / "small", N_SMALL, 11)


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_dataset(tmp_path_factory.mktemp("resilience") / "medium", N_BUFFERED, 12)


@pytest.fixture(scope="module")
def tracker() -> JobTracker:
    return JobTracker(connect_redis(get_settings().broker_url))


@pytest.fixture(scope="module")
def store(stack: RunningStack) -> Admin:
    return open_store(get_settings())


def start_ingest(
    stack: RunningStack, dataset: Path, collection: str, job_id: str
) -> subprocess.Popen:
    """`medindex ingest` as a user runs it, in the background while the test breaks things."""
    argv = ["ingest", "--dataset", str(dataset), "--collection", collection, "--job-id", job_id]
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv, "--json"],
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(ingest: subprocess.Popen, timeout_s: float = 300, exit_code: int = 0) -> dict:
    """The ingest's summary once it ends (1 when every image failed)."""
    out, err = ingest.communicate(timeout=timeout_s)
    assert ingest.returncode == exit_code, err
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


def restarted(stack: RunningStack, name: str) -> int:
    return len(re.findall(rf"medindex up: {name} exited with code -9; restarted", log(stack)))


def log(stack: RunningStack) -> str:
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


def write_points(store: Admin, tracker: JobTracker, collection: str, n: int) -> None:
    """`n` points (`point_message`'s, the same each time) in `collection`, made if need be,
    through the upsert queue; returns once all are written."""
    store.ensure_collection(collection, {"dim": 384})
    job_id = f"{collection}-points"
    if written_before := list(tracker.redis.scan_iter(f"{PREFIX}{job_id}*")):
        tracker.redis.delete(*written_before)  # counted afresh
    tracker.create(job_id, n, {"collection": collection})
    for start in range(0, n, 64):
        send_points(point_message(job_id, collection, range(start, min(n, start + 64))))
    wait_for(tracker, job_id, lambda progress: progress.indexed == n)


def wait_for_log(
    stack: RunningStack, text: str | tuple[str, ...], seen_before: int, timeout_s: float = 60
) -> None:
    """Until `text` (or any of several texts, counted together) appears in the stack's log
    more than `seen_before` times."""
    texts = (text,) if isinstance(text, str) else text
    deadline = time.monotonic() + timeout_s
    while logged(stack, texts) <= seen_before:
        assert time.monotonic() < deadline, f"{texts!r} not logged again in {timeout_s:.0f}s"
        time.sleep(0.1)


def logged(stack: RunningStack, texts: tuple[str, ...]) -> int:
    """How many times the stack's log holds any of `texts`."""
    whole = log(stack)
    return sum(whole.count(text) for text in texts)


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


def scroll_all(store: object, collection: str) -> list[dict]:
    return list(every_point(store, collection))


def write_failing_first(folder: Path, n: int) -> tuple[Path, dict[str, str]]:
    """Sample images whose first rows are bad ones (the first job fails them), in
    `folder/failing`; returns it and {bad image key: reason}, as `chaos.write_laced_dataset`."""
    table = datasets.load_dataset(str(sample_dataset(folder / "base", n)), split="train")
    rows = table.to_list()
    bad = {}
    for row, (name, (data, reason)) in zip(rows, bad_images().items(), strict=False):
        row |= {"image_id": f"bad_{name}", "image": {"bytes": data, "path": None}}
        bad[row["image_id"]] = reason
    out = folder / "failing" / "data" / "train-00000-of-00001.parquet"
    out.parent.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=table.features).to_parquet(str(out))
    return folder / "failing", bad


# --- the audit's planted duplicates (tests/system/test_audit.py, the page's Audit view) ---


def encoded(picture: Image.Image, fmt: str, **how: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **how)
    return buffer.getvalue()


def planted_skin(folder: Path, n: int, seed: int) -> tuple[dict, dict]:
    """The skin sample with two rows planted: `ISIC_copy`, the first image's bytes under
    another diagnosis, and `ISIC_reencoded`, the second image as a JPEG of quality 70.
    Returns the first and second rows."""
    sample_dataset(folder, n, seed)
    table = datasets.load_dataset(str(folder), split="train")
    first, second = table[0], table[1]
    other_dx = next(dx for dx in table["dx"] if dx != first["dx"])
    copied = {"bytes": jpeg_bytes(folder, 0), "path": None}
    reencoded = {"bytes": encoded(second["image"], "JPEG", quality=70), "path": None}
    extra = [
        first | {"image_id": "ISIC_copy", "dx": other_dx, "image": copied},
        second | {"image_id": "ISIC_reencoded", "image": reencoded},
    ]
    rows_now = table.cast_column("image", datasets.Image(decode=False)).to_list()
    planted = datasets.Dataset.from_list(rows_now + extra, features=table.features)
    shutil.rmtree(folder / "data")
    (folder / "data").mkdir()
    planted.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return first, second


def jpeg_bytes(folder: Path, row: int) -> bytes:
    table = datasets.load_dataset(str(folder), split="train").cast_column(
        "image", datasets.Image(decode=False)
    )
    return table[row]["image"]["bytes"]
