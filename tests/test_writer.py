"""The writer against a real embedded Qdrant engine and the stack's real Redis."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from conftest import Stack
from qdrant_client import QdrantClient

from pipeline.progress import JobTracker, connect_redis
from pipeline.schemas import EmbedJob, PointBatch, SourceRef, point_id
from pipeline.settings import get_settings
from pipeline.store import Store
from pipeline.writer import Span, Writer


def batch(job: str, rows: range, vectors: np.ndarray) -> PointBatch:
    ref = SourceRef(dataset="d", name="d")
    embed_job = EmbedJob(job_id=job, collection="w", source=ref, model="m", rows=list(rows))
    ids = [point_id("d", f"img-{r}") for r in rows]
    payloads = [{"image_id": f"img-{r}"} for r in rows]
    return PointBatch.build(embed_job, ids, list(rows), payloads, vectors)


@pytest.fixture()
def writer(stack: Stack, tmp_path: Path) -> Writer:
    store = Store(QdrantClient(path=str(tmp_path / "qdrant")), "test store")
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    yield Writer(store, tracker, batch_size=10, retry_budget_s=1)
    store.close()


def test_a_refused_message_fails_alone_with_its_reason(writer: Writer) -> None:
    rng = np.random.default_rng(0)
    good = batch("wjob", range(0, 16), rng.normal(size=(16, 8)).astype(np.float32))
    poisoned = rng.normal(size=(16, 8)).astype(np.float32)
    poisoned[3, 0] = np.nan  # Qdrant refuses NaN vectors
    bad = batch("wjob", range(16, 32), poisoned)
    writer.tracker.create("wjob", 32, {"collection": "w"})
    written = writer.write([Span(good, 0, 16), Span(bad, 0, 16)])
    assert written == 16
    assert writer.store.count("w") == 16
    failures = writer.tracker.failures("wjob")
    assert [f["row"] for f in failures] == list(range(16, 32))
    assert all("store refused" in f["reason"] for f in failures)
    progress = writer.tracker.progress("wjob")
    assert (progress.indexed, progress.failed) == (16, 16)


def test_spans_write_only_their_points_in_calls_of_batch_size(writer: Writer) -> None:
    vectors = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    first = batch("wjob2", range(0, 16), vectors)
    writer.tracker.create("wjob2", 16, {"collection": "w"})
    assert writer.write([Span(first, 0, 7)]) == 7
    assert writer.write([Span(first, 7, 16)]) == 9
    assert writer.store.count("w") == 16
    sizes = [w["points"] for w in writer.tracker.recent_writes(2)]
    assert sorted(sizes) == [7, 9]


def test_embedded_collections_keep_a_write_ahead_log(tmp_path: Path) -> None:
    """The embedded engine commits once per point: a write-ahead log makes each commit one
    synced append (BENCHMARKS.md), and what it acknowledged is there after a reopen."""
    path = tmp_path / "qdrant"
    store = Store(QdrantClient(path=str(path)), "test store", embedded_path=path)
    store.ensure_collection("wal", {"dim": 8, "model": "m"})
    ids = [point_id("d", f"img-{r}") for r in range(16)]
    vectors = np.random.default_rng(2).normal(size=(16, 8)).astype(np.float32)
    store.upsert("wal", ids, vectors, [{"row": r} for r in range(16)])
    store.close()
    with closing(sqlite3.connect(path / "collection" / "wal" / "storage.sqlite")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: synced per commit
    reopened = Store(QdrantClient(path=str(path)), "test store", embedded_path=path)
    assert reopened.count("wal") == 16
    reopened.close()
