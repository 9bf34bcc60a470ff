"""The writer: buffered point batches into the store, in calls of at most `batch_size` points.

It writes and reports what happened (`WriteReport`); the job bookkeeping that follows from the
report lives in `pipeline.ledger`. It never creates a collection: a missing one is a refusal.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.schemas import PointBatch
from pipeline.store import PointWriter, StoreError

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

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WriteCall:
    """One successful store call, for the write log."""

    collection: str
    points: int
    seconds: float


@dataclass
class WriteReport:
    """What became of each span: written, refused (with the reason: sending it again would
    fail again) or parked (the store stayed unavailable for the whole retry budget)."""

    written: list[Span] = field(default_factory=list)
    refused: list[tuple[Span, str]] = field(default_factory=list)
    parked: list[tuple[Span, str]] = field(default_factory=list)
    calls: list[WriteCall] = field(default_factory=list)

    @property
    def points_written(self) -> int:
        return sum(len(span) for span in self.written)


class Writer:
    def __init__(self, store: PointWriter, batch_size: int, retry_budget_s: float) -> None:
        self.store = store
        self.batch_size = batch_size
        self.retry_budget_s = retry_budget_s

    def write(self, spans: list[Span], deadline: float | None = None) -> WriteReport:
        """Write every span's points.

        An outage is retried with backoff until `deadline` (a `time.monotonic()` value; by
        default `retry_budget_s` from now); past it, the spans are parked.
        A refusal (bad vector, wrong size, a collection that does not exist) is narrowed down
        to the messages that cause it; the others are written.
        """
        report = WriteReport()
        by_collection: dict[str, list[Span]] = defaultdict(list)
        for span in spans:
            by_collection[span.batch.collection].append(span)
        deadline = deadline if deadline is not None else time.monotonic() + self.retry_budget_s
        for group in by_collection.values():
            self._write_or_narrow(group, report, deadline)
        return report

    def _write_or_narrow(self, spans: list[Span], report: WriteReport, deadline: float) -> None:
        try:
            self._write_collection(spans[0].batch.collection, spans, report, deadline)
        except StoreError as exc:
            if exc.transient:
                reason = f"store unavailable for {self.retry_budget_s:g}s: {exc}"
                log.error("job=%s: parked %d points: %s", _jobs(spans), _points(spans), exc)
                report.parked.extend((span, reason) for span in spans)
            elif len(spans) > 1:
                for span in spans:
                    self._write_or_narrow([span], report, deadline)
            else:
                log.error(
                    "job=%s: the store refused %d points: %s", _jobs(spans), len(spans[0]), exc
                )
                report.refused.append((spans[0], f"store refused: {exc}"))

    def _write_collection(
        self, collection: str, spans: list[Span], report: WriteReport, deadline: float
    ) -> None:
        ids = [i for s in spans for i in s.batch.ids[s.start : s.stop]]
        payloads = [p for s in spans for p in s.batch.payloads[s.start : s.stop]]
        vectors = np.concatenate([s.batch.matrix()[s.start : s.stop] for s in spans])
        for start in range(0, len(ids), self.batch_size):
            stop = start + self.batch_size
            call = self._write_once(
                collection, ids[start:stop], vectors[start:stop], payloads[start:stop], deadline
            )
            report.calls.append(call)
        report.written.extend(spans)

    def _write_once(
        self, collection: str, ids: list, vectors: np.ndarray, payloads: list, deadline: float
    ) -> WriteCall:
        """One call, tried at least once, and again with backoff until `deadline`."""
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
            return WriteCall(collection, len(ids), seconds)
        raise AssertionError("unreachable: retry_delays() never ends")


def _jobs(spans: list[Span]) -> str:
    return ",".join(sorted({span.batch.job_id for span in spans}))


def _points(spans: list[Span]) -> int:
    return sum(len(span) for span in spans)
