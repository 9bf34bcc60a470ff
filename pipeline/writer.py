"""The writer: buffered point batches into Qdrant, in calls of at most `batch_size` points."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pipeline.progress import JobTracker
from pipeline.schemas import PointBatch
from pipeline.store import Store, StoreError

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.5, 1, 2, 4, 8, 16, 30)


@dataclass(frozen=True)
class Span:
    """Points [start:stop) of one buffered message."""

    batch: PointBatch
    start: int
    stop: int


class Writer:
    def __init__(self, store: Store, tracker: JobTracker, batch_size: int) -> None:
        self.store = store
        self.tracker = tracker
        self.batch_size = batch_size
        self._ensured: set[str] = set()

    def write(self, spans: list[Span]) -> int:
        """Write every span's points; returns how many. Raises StoreError once retries run out."""
        by_collection: dict[str, list[Span]] = defaultdict(list)
        for span in spans:
            by_collection[span.batch.collection].append(span)
        written = 0
        for collection, group in by_collection.items():
            written += self._write_collection(collection, group)
        return written

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
            self.store.ensure_collection(collection, dim)
            self._ensured.add(collection)

    def _write_once(self, collection: str, ids: list, vectors: np.ndarray, payloads: list) -> None:
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
            started = time.perf_counter()
            try:
                self.store.upsert(collection, ids, vectors, payloads)
            except StoreError as exc:
                if delay is None:
                    raise
                log.warning("write of %d points failed (try %d): %s", len(ids), attempt, exc)
                time.sleep(delay)
                continue
            seconds = time.perf_counter() - started
            log.info("wrote %d points to %s in %.2fs", len(ids), collection, seconds)
            self.tracker.record_write(collection, len(ids), seconds)
            return
