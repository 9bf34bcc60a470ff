"""How buffered point messages become Qdrant writes of exactly `batch_size` points.

Messages carry a job's points (16 at most by default); 1,000 is not a multiple of 16, so the
last message of a write may be split: its first part goes into this write, the rest into the
next, and the message is acknowledged only once all of its points are written.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlushPlan:
    complete: int  # messages written whole (after the first one's `skip`): acknowledge them
    take: int  # points of the next message written now; it stays buffered with the rest

    def spans(self, sizes: list[int], skip: int) -> list[tuple[int, int]]:
        """(start, stop) of the points each message in this write contributes, oldest first."""
        spans = [(skip if i == 0 else 0, size) for i, size in enumerate(sizes[: self.complete])]
        if self.take:
            start = skip if self.complete == 0 else 0
            spans.append((start, start + self.take))
        return spans


def plan_flush(sizes: list[int], skip: int, batch_size: int) -> FlushPlan:
    """Write the largest multiple of `batch_size` points buffered, or all of them if fewer.

    `sizes` are the points per buffered message, oldest first; the first message already had
    `skip` of its points written by an earlier flush.
    """
    available = sum(sizes) - skip
    target = available if available < batch_size else available - available % batch_size
    complete = 0
    for index, size in enumerate(sizes):
        points = size - (skip if index == 0 else 0)
        if points > target:
            return FlushPlan(complete, target)
        target -= points
        complete += 1
    return FlushPlan(complete, 0)
