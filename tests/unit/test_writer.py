"""The writer against a real embedded Qdrant engine (Edge), no Redis: it writes and reports;
the ledger turns its report into the job's state (checked against a real Redis).

A Qdrant server cannot run here, so the server backend meets its transports' errors for real:
qdrant-client over REST and over gRPC to a closed port (an outage), and to real HTTP and gRPC
servers that answer every request with one error status (a refusal, or an overload).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import free_port

from pipeline import ledger
from pipeline.progress import JobTracker, connect_redis
from pipeline.schemas import EmbedJob, PointBatch, SourceRef, point_id
from pipeline.settings import Settings
from pipeline.store import StoreError
from pipeline.store.edge import EdgeStore
from pipeline.store.server import ServerStore
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


def test_the_ledger_records_what_the_writer_reports(writer: Writer, bare_redis: str) -> None:
    tracker = JobTracker(connect_redis(bare_redis))
    tracker.create("wjob4", 32, {"collection": "w"})
    good = batch("wjob4", range(0, 16), vectors(4))
    gone = batch("wjob4", range(16, 32), vectors(5), collection="gone")
    ledger.record(tracker, writer.write([Span(good, 0, 16), Span(gone, 0, 16)]))
    progress = tracker.progress("wjob4")
    assert (progress.indexed, progress.failed) == (16, 16)
    assert [f["row"] for f in tracker.failures("wjob4")] == list(range(16, 32))
    newest = tracker.recent_writes(2)  # newest first: the calls of 10 and then 6 points
    assert [(w["collection"], w["points"]) for w in newest] == [("w", 6), ("w", 10)]


# --- the server backend over both transports -----------------------------------------------

TRANSPORTS = ("rest", "grpc")
TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class AnswerEveryCall(BaseHTTPRequestHandler):
    """Qdrant's REST error answer, with the status the test sets on the server."""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"status": {"error": f"answered {self.server.status}"}}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT

    def log_message(self, *args: object) -> None:
        """Quiet."""


class AbortEveryCall(grpc.GenericRpcHandler):
    """Ends every gRPC call with the status code the test sets."""

    code = grpc.StatusCode.NOT_FOUND

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: context.abort(self.code, f"answered {self.code.name}")
        )


@pytest.fixture(scope="module")
def answering() -> Iterator[tuple[ThreadingHTTPServer, AbortEveryCall, int]]:
    """A REST and a gRPC endpoint that answer every request with the status set on them."""
    rest = ThreadingHTTPServer(("127.0.0.1", 0), AnswerEveryCall)
    rest.status = 404
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    handler = AbortEveryCall()
    server = grpc.server(ThreadPoolExecutor(2), handlers=[handler])
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rest, handler, grpc_port
    server.stop(None)
    rest.shutdown()


def server_store(transport: str, rest_port: int, grpc_port: int) -> ServerStore:
    settings = Settings(
        qdrant_url=f"http://127.0.0.1:{rest_port}",
        qdrant_prefer_grpc=transport == "grpc",
        qdrant_grpc_port=grpc_port,
        qdrant_timeout_s=5,
    )
    return ServerStore.connect(settings)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreachable_server_is_retried_with_backoff_then_parked(transport: str) -> None:
    """Issue 21, item 1: over gRPC, a raw RpcError escaped the writer (no backoff, no parking)."""
    writer = Writer(server_store(transport, free_port(), free_port()), 10, retry_budget_s=1)
    started = time.monotonic()
    report = writer.write([Span(batch("sjob", range(16), vectors(6)), 0, 16)])
    assert time.monotonic() - started >= 0.5  # one backoff delay at least, then the budget ended
    ((_, reason),) = report.parked
    assert "cannot reach Qdrant" in reason and (report.written, report.refused) == ([], [])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_refusal_fails_the_points_at_once(
    transport: str, answering: tuple[ThreadingHTTPServer, AbortEveryCall, int]
) -> None:
    """Issue 21, item 1: a NOT_FOUND (a pruned version) looped forever over gRPC."""
    rest, handler, grpc_port = answering
    rest.status, handler.code = 404, grpc.StatusCode.NOT_FOUND
    writer = Writer(server_store(transport, rest.server_port, grpc_port), 10, retry_budget_s=30)
    started = time.monotonic()
    report = writer.write([Span(batch("sjob2", range(16), vectors(7)), 0, 16)])
    assert time.monotonic() - started < 5  # refused at once, never retried for the budget
    ((_, reason),) = report.refused
    assert "404" in reason if transport == "rest" else "NOT_FOUND" in reason
    assert (report.written, report.parked) == ([], [])


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_grpc_status_codes_are_outages_or_refusals(
    code: grpc.StatusCode, answering: tuple[ThreadingHTTPServer, AbortEveryCall, int]
) -> None:
    rest, handler, grpc_port = answering
    handler.code = code
    store = server_store("grpc", rest.server_port, grpc_port)
    with pytest.raises(StoreError, match=code.name) as refused:
        store.upsert("w", [point_id("d", "train", "x")], np.ones((1, 8), np.float32), [{}])
    assert refused.value.transient == (code in TRANSIENT_CODES)
