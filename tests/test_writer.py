"""The writer against a real embedded Qdrant engine (Edge), no Redis: it writes and reports;
the ledger turns its report into the job's state (checked against the stack's real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Stack

from pipeline import ledger
from pipeline.progress import JobTracker, connect_redis
from pipeline.schemas import EmbedJob, PointBatch, SourceRef, point_id
from pipeline.settings import get_settings
from pipeline.store_edge import EdgeStore
from pipeline.writer import Span, Writer


def batch(job: str, rows: range, vectors: np.ndarray, collection: str = "w") -> PointBatch:
    ref = SourceRef(dataset="d", name="d")
    embed_job = EmbedJob(job_id=job, collection=collection, source=ref, model="m", rows=list(rows))
    ids = [point_id("d", "train", f"img-{r}") for r in rows]
    payloads = [{"image_id": f"img-{r}"} for r in rows]
    return PointBatch.build(embed_job, ids, list(rows), payloads, vectors)


@pytest.fixture()
def writer(tmp_path: Path) -> Iterator[Writer]:
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("w", {"dim": 8, "model": "m"})
    yield Writer(store, batch_size=10, retry_budget_s=1)
    store.close()


def vectors(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(16, 8)).astype(np.float32)


def test_a_refused_message_fails_alone_with_its_reason(writer: Writer) -> None:
    good = batch("wjob", range(0, 16), vectors(0))
    poisoned = vectors(1)
    poisoned[3, 0] = np.nan  # refused by the store
    bad = batch("wjob", range(16, 32), poisoned)
    report = writer.write([Span(good, 0, 16), Span(bad, 0, 16)])
    assert [span.batch for span in report.written] == [good]
    assert [span.batch for span, _ in report.refused] == [bad]
    assert "store refused" in report.refused[0][1] and "NaN" in report.refused[0][1]
    assert (report.points_written, report.parked) == (16, [])
    assert writer.store.count("w") == 16


def test_spans_write_only_their_points_in_calls_of_batch_size(writer: Writer) -> None:
    first = batch("wjob2", range(0, 16), vectors(2))
    assert writer.write([Span(first, 0, 7)]).points_written == 7
    report = writer.write([Span(first, 7, 16)])
    assert [call.points for call in report.calls] == [9]
    assert writer.store.count("w") == 16
    assert [call.points for call in writer.write([Span(first, 0, 16)]).calls] == [10, 6]


def test_a_missing_collection_is_a_refusal_never_created(writer: Writer) -> None:
    """Issue 12, item 6: a retry after `--keep` pruned a version must not bring back a
    fragment without the collection's metadata."""
    pruned = batch("wjob3", range(0, 16), vectors(3), collection="skin__v1")
    report = writer.write([Span(pruned, 0, 16)])
    assert report.points_written == 0 and not report.parked
    ((_, reason),) = report.refused
    assert "'skin__v1' does not exist" in reason
    assert "skin__v1" not in writer.store.collections()


def test_the_ledger_records_what_the_writer_reports(writer: Writer, stack: Stack) -> None:
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    tracker.create("wjob4", 32, {"collection": "w"})
    good = batch("wjob4", range(0, 16), vectors(4))
    gone = batch("wjob4", range(16, 32), vectors(5), collection="gone")
    ledger.record(tracker, writer.write([Span(good, 0, 16), Span(gone, 0, 16)]))
    progress = tracker.progress("wjob4")
    assert (progress.indexed, progress.failed) == (16, 16)
    assert [f["row"] for f in tracker.failures("wjob4")] == list(range(16, 32))
    newest = tracker.recent_writes(2)  # newest first: the calls of 10 and then 6 points
    assert [(w["collection"], w["points"]) for w in newest] == [("w", 6), ("w", 10)]
