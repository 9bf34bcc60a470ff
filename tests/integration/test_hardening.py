"""Issue 12's defects, each on the session's real stack: rows that must end indexed or failed
with their reason, never lost and never left pending."""

from __future__ import annotations

import datetime
import decimal
import io
import threading
from pathlib import Path

import datasets
import pytest
from PIL import Image
from support import assert_one_line_error, write_table

from pipeline.progress import JobTracker, connect_redis
from pipeline.settings import get_settings
from pipeline.sources import resolve
from pipeline.store import open_store
from producers.harness import RunningStack
from producers.ingest import enqueue, wait

N = 20


@pytest.fixture(scope="module")
def tracker() -> JobTracker:
    return JobTracker(connect_redis(get_settings().broker_url))


def png(shade: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 90, 200 - shade)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def ingest(stack: RunningStack, data: Path, collection: str, *extra: str) -> dict:
    result = stack.medindex(
        "ingest", "--dataset", str(data), "--collection", collection, "--job-id", collection,
        "--timeout", "120", "--json", *extra, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.json()


# --- 1. an unexpected error never loses a job ---------------------------------------------------


def test_dates_decimals_and_a_second_image_column_are_indexed(
    stack: RunningStack, tmp_path: Path
) -> None:
    columns = {
        "image": [png(i * 10) for i in range(N)],
        "mask": [png(255 - i) for i in range(N)],
        "image_id": [f"typed-{i}" for i in range(N)],
        "taken": [datetime.datetime(2024, 1, 1, 12, i) for i in range(N)],
        "born": [datetime.date(1960, 1, 1 + i) for i in range(N)],
        "dose": [decimal.Decimal(f"{i}.25") for i in range(N)],
    }
    features = {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "image_id": datasets.Value("string"),
        "taken": datasets.Value("timestamp[s]"),
        "born": datasets.Value("date32"),
        "dose": datasets.Value("decimal128(10, 2)"),
    }
    data = write_table(tmp_path, columns, features)
    assert ingest(stack, data, "dated") | {"seconds": 0} == {
        "job_id": "dated", "indexed": N, "failed": 0, "seconds": 0,
    }  # fmt: skip
    point = open_store(get_settings()).scroll("dated", limit=1)["points"][0]["payload"]
    assert point["taken"].startswith("2024-01-01T12:") and point["born"].startswith("1960-01-")
    assert isinstance(point["dose"], float) and "mask" not in point


def test_a_job_whose_rows_are_gone_fails_them_with_the_reason(
    stack: RunningStack, tmp_path: Path, tracker: JobTracker
) -> None:
    """A shrunken dataset (rows past its end): those rows fail with the reason, the job ends."""
    data = write_table(
        tmp_path,
        {"image": [png(i) for i in range(N)], "image_id": [f"gone-{i}" for i in range(N)]},
        {"image": datasets.Image(), "image_id": datasets.Value("string")},
    )
    ref = resolve(str(data))
    model = get_settings().model
    open_store(get_settings()).ensure_collection("gone", {"dim": 384})
    meta = {"collection": "gone", "dataset": ref.dataset, "split": ref.split,
            "source_name": ref.identity, "model": model, "pooling": "mean"}  # fmt: skip
    tracker.create("gone", N + 16, meta)
    enqueue("gone", "gone", ref, model, "mean", [list(range(16)), list(range(16, N + 16))])
    final = wait(tracker, "gone", lambda _: None, timeout_s=90)
    assert (final.indexed, final.failed) == (16, 20)
    assert all("IndexError" in f["reason"] for f in tracker.failures("gone"))


# --- 2. every image its own point --------------------------------------------------------------


def test_missing_and_duplicate_keys_and_two_splits_each_keep_every_image(
    stack: RunningStack, tmp_path: Path
) -> None:
    keys = [None] * 3 + ["dup-a"] * 4 + ["dup-b"] * 2 + [f"k{i}" for i in range(11)]
    features = {"image": datasets.Image(), "image_id": datasets.Value("string")}
    data = write_table(tmp_path, {"image": [png(i) for i in range(N)], "image_id": keys}, features)
    test_split = datasets.Dataset.from_dict(
        {"image": [png(i) for i in range(5)], "image_id": [f"k{i}" for i in range(5)]},
        features=datasets.Features(features),
    )  # the same keys as train: `--split test` must add to the collection, not overwrite
    test_split.to_parquet(data / "data" / "test-00000-of-00001.parquet")

    result = stack.medindex(
        "ingest", "--dataset", str(data), "--collection", "keys", "--json", timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.json()["indexed"] == N
    assert "3 rows have no image_id" in result.stderr
    assert "6 rows share 2 image_id values (dup-a, dup-b)" in result.stderr
    store = open_store(get_settings())
    assert store.count("keys") == N
    result = stack.medindex(
        "ingest", "--dataset", str(data), "--split", "test", "--collection", "keys", "--json",
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert store.count("keys") == N + 5


# --- 4. a huge or endless file, a worker lost again and again ----------------------------------


def test_oversized_and_endless_files_are_refused_before_they_are_read(
    stack: RunningStack, tmp_path: Path, tracker: JobTracker
) -> None:
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 90, 20)).save(tmp_path / f"good{i}.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with (tmp_path / "huge.png").open("wb") as huge:
        huge.truncate(get_settings().max_image_bytes + 1)  # sparse: costs no disk
    names = ["good0", "good1", "good2", "zero", "huge"]
    (tmp_path / "metadata.csv").write_text(
        "file_name,image_id\n" + "".join(f"{n}.png,{n}\n" for n in names)
    )
    limit = f"limit {get_settings().max_image_bytes}"
    # As Hugging Face's imagefolder (metadata.csv naming file_name), keyed by image_id.
    summary = ingest(stack, tmp_path, "files", "--format", "hf")
    assert (summary["indexed"], summary["failed"]) == (3, 2)
    reasons = {f["key"]: f["reason"] for f in tracker.failures("files")}
    assert "not a regular file" in reasons["zero"] and limit in reasons["huge"]
    # As detected: a table naming the folder's images, read by the table reader, keyed by path;
    # a link that leaves the folder is refused before it is followed.
    summary = ingest(stack, tmp_path, "files-table")
    assert (summary["indexed"], summary["failed"]) == (3, 2)
    reasons = {f["key"]: f["reason"] for f in tracker.failures("files-table")}
    assert "outside the dataset folder" in reasons["zero.png"] and limit in reasons["huge.png"]


def test_a_job_whose_worker_keeps_dying_fails_its_rows_with_the_reason(
    stack: RunningStack, dataset: Path, tracker: JobTracker
) -> None:
    """As if the worker had been OOM-killed on this job three times already."""
    ref = resolve(str(dataset))
    model = get_settings().model
    open_store(get_settings()).ensure_collection("lost", {"dim": 384})
    meta = {"collection": "lost", "dataset": ref.dataset, "split": ref.split,
            "source_name": ref.identity, "model": model, "pooling": "mean"}  # fmt: skip
    tracker.create("lost", 32, meta)
    lost = get_settings().embed_max_lost
    tracker.redis.hset("medindex:job:lost:deliveries", "0", lost)
    enqueue("lost", "lost", ref, model, "mean", [list(range(16)), list(range(16, 32))])
    final = wait(tracker, "lost", lambda _: None, timeout_s=90)
    assert (final.indexed, final.failed) == (16, 16)
    reasons = {f["reason"] for f in tracker.failures("lost")}
    assert reasons == {f"the embed worker was lost {lost} times on these rows (out of memory?)"}


# --- 3. one state per row ----------------------------------------------------------------------


def test_a_row_is_never_both_indexed_and_failed(stack: RunningStack, tracker: JobTracker) -> None:
    """Failures and writes of the same rows from two clients at once (a redelivered job's
    failure racing the write of its first delivery)."""
    rows = list(range(3000))
    tracker.create("race", len(rows), {})
    failing = JobTracker(connect_redis(get_settings().broker_url))

    def fail_each() -> None:
        for row in rows:
            failing.mark_failed("race", [{"row": row, "key": None, "reason": "late failure"}])

    thread = threading.Thread(target=fail_each)
    thread.start()
    for row in rows:
        tracker.mark_indexed("race", [row])
    thread.join()
    progress = tracker.progress("race")
    assert progress.indexed == len(rows) and progress.failed == 0


def test_resuming_a_job_over_a_changed_dataset_is_refused(
    stack: RunningStack, tmp_path: Path
) -> None:
    features = {"image": datasets.Image(), "image_id": datasets.Value("string")}
    data = write_table(
        tmp_path, {"image": [png(i) for i in range(N)], "image_id": [f"c{i}" for i in range(N)]},
        features,
    )  # fmt: skip
    ingest(stack, data, "changing")
    shrunk = datasets.Dataset.from_dict(
        {"image": [png(i) for i in range(N - 4)], "image_id": [f"c{i}" for i in range(4, N)]},
        features=datasets.Features(features),
    )
    shrunk.to_parquet(data / "data" / "train-00000-of-00001.parquet")
    result = stack.medindex(
        "ingest", "--dataset", str(data), "--collection", "changing", "--job-id", "changing"
    )
    assert_one_line_error(result, "changed since job changing started", f"{N} rows then")
