"""A job's state in Redis (pipeline.progress) on a real redis-server: rows are bits, so a
redelivered row counts once and a job's bookkeeping does not grow with the dataset's size."""

from __future__ import annotations

from pipeline.progress import PREFIX, JobTracker, connect_redis


def test_rows_count_once_and_read_back_as_done_or_pending(bare_redis: str) -> None:
    tracker = JobTracker(connect_redis(bare_redis))
    tracker.create("rows", 100, {})
    tracker.mark_embedded("rows", [0, 3, 99])
    tracker.mark_embedded("rows", [3, 99])  # a redelivered job
    tracker.mark_indexed("rows", [3, 64, 99])
    tracker.mark_indexed("rows", [99])
    # Row 3 was indexed by another delivery: its failure is not recorded; row 5's is.
    tracker.mark_failed("rows", [{"row": 3, "key": "a", "reason": "late"},
                                 {"row": 5, "key": "b", "reason": "unreadable"}])  # fmt: skip
    progress = tracker.progress("rows")
    assert (progress.embedded, progress.indexed, progress.failed) == (3, 3, 1)
    assert tracker.done_rows("rows") == {3, 5, 64, 99}
    assert tracker.pending_shards("rows", [[0, 1], [3, 99], [5, 64]]) == [[0, 1]]


def test_a_row_takes_a_bit_not_a_set_member(bare_redis: str) -> None:
    """Issue 23: Redis' peak independent of the dataset's size. Sets of row numbers took
    128 B a row (32 MB for these 250,000); bitmaps take a bit a row in each of two keys."""
    tracker = JobTracker(connect_redis(bare_redis))
    rows = 250_000
    tracker.create("large", rows, {})
    for start in range(0, rows, 25_000):
        tracker.mark_embedded("large", list(range(start, start + 25_000)))
        tracker.mark_indexed("large", list(range(start, start + 25_000)))
    used = sum(tracker.redis.memory_usage(f"{PREFIX}large:{part}", samples=0)
               for part in ("embedded", "indexed"))  # fmt: skip
    assert tracker.progress("large").indexed == rows
    assert used < 2**18, used  # under 1.1 B a row, Redis' growth steps included
    assert len(tracker.done_rows("large")) == rows
