"""The writer: buffered point batches into Qdrant, in calls of at most `batch_size` points."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.progress import JobTracker
from pipeline.schemas import PointBatch
from pipeline.store import Store, StoreError

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 30.0


def retry_delays() -> Iterator[float]:
    """0.5, 1, 2, 4 ... 30, 30 seconds between tries."""
    delay = FIRST_RETRY_S
    while True:
        yield delay
        delay = min(2 * delay, LONGEST_RETRY_S)


@dataclass(frozen=True)
class Span:
    """Points [start:stop) of one buffered message."""

    batch: PointBatch
    start: int
    stop: int


class Writer:
    def __init__(
        self, store: Store, tracker: JobTracker, batch_size: int, retry_budget_s: float
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.batch_size = batch_size
        self.retry_budget_s = retry_budget_s
        self._ensured: set[str] = set()

    def write(self, spans: list[Span]) -> int:
        """Write every span's points; returns how many were written.

        An outage is retried with backoff for `retry_budget_s`; past it, the points are parked
        in Redis (shown as failed, kept for `medindex retry`), never dropped. A refusal (bad
        vector, wrong size) is narrowed down to the messages that cause it: their images are
        recorded as failed, with the reason, and the others are written.
        """
        by_collection: dict[str, list[Span]] = defaultdict(list)
        for span in spans:
            by_collection[span.batch.collection].append(span)
        return sum(self._write_or_narrow(group) for group in by_collection.values())

    def _write_or_narrow(self, spans: list[Span]) -> int:
        try:
            return self._write_collection(spans[0].batch.collection, spans)
        except StoreError as exc:
            if exc.transient:
                self._park(spans, exc)
                return 0
            if len(spans) > 1:
                return sum(self._write_or_narrow([span]) for span in spans)
            self._refuse(spans[0], exc)
            return 0

    def _refuse(self, span: Span, exc: StoreError) -> None:
        batch = span.batch
        log.error(
            "job=%s: the store refused %d points: %s", batch.job_id, span.stop - span.start, exc
        )
        self.tracker.mark_failed(batch.job_id, _failures(span, f"store refused: {exc}"))

    def _park(self, spans: list[Span], exc: StoreError) -> None:
        for span in spans:
            job_id = span.batch.job_id
            reason = (
                f"store unavailable for {self.retry_budget_s:g}s: {exc}; "
                f"points kept, `medindex retry {job_id}` writes them"
            )
            log.error("job=%s: parked %d points: %s", job_id, span.stop - span.start, exc)
            kept = span.batch.slice(span.start, span.stop).model_dump_json()
            self.tracker.park(job_id, kept, _failures(span, reason))

    def _write_collection(self, collection: str, spans: list[Span]) -> int:
        ids = [i for s in spans for i in s.batch.ids[s.start : s.stop]]
        payloads = [p for s in spans for p in s.batch.payloads[s.start : s.stop]]
        vectors = np.concatenate([s.batch.matrix()[s.start : s.stop] for s in spans])
        self._ensure(collection, vectors.shape[1])
        for start in range(0, len(ids), self.batch_size):
            stop = start + self.batch_size
            self._write_once(collection, ids[start:stop], vectors[start:stop], payloads[start:stop])
        for span in spans:
            self.tracker.mark_indexed(span.batch.job_id, span.batch.rows[span.start : span.stop])
        return len(ids)

    def _ensure(self, collection: str, dim: int) -> None:
        if collection not in self._ensured:
            self.store.ensure_collection(collection, {"dim": dim})
            self._ensured.add(collection)

    def _write_once(self, collection: str, ids: list, vectors: np.ndarray, payloads: list) -> None:
        """One call, tried again with backoff until `retry_budget_s` (tries included) is spent."""
        deadline = time.monotonic() + self.retry_budget_s
        for attempt, delay in enumerate(retry_delays(), start=1):
            started = time.perf_counter()
            try:
                self.store.upsert(collection, ids, vectors, payloads)
            except StoreError as exc:
                if not exc.transient or time.monotonic() + delay > deadline:
                    raise
                log.warning("write of %d points failed (try %d): %s", len(ids), attempt, exc)
                time.sleep(delay)
                continue
            seconds = time.perf_counter() - started
            log.info("wrote %d points to %s in %.2fs", len(ids), collection, seconds)
            self.tracker.record_write(collection, len(ids), seconds)
            return


def _failures(span: Span, reason: str) -> list[dict]:
    batch = span.batch
    keys = batch.keys()[span.start : span.stop]
    rows = batch.rows[span.start : span.stop]
    return [{"row": row, "key": key, "reason": reason} for row, key in zip(rows, keys, strict=True)]
