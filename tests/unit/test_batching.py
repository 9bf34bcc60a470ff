"""Which buffered points go into a write: exactly 1,000, splitting a message where needed."""

from __future__ import annotations

import random

from pipeline.batching import FlushPlan, plan_flush


def simulate(sizes: list[int], batch_size: int, flush_every: int) -> list[int]:
    """Feed messages in and flush like the upsert task; returns the points of every flush.

    Full batches are written as they fill; the remainder only at the end (the quiet flush).
    """
    buffered: list[int] = []
    skip, writes = 0, []
    for index, size in enumerate(sizes):
        buffered.append(size)
        last = index == len(sizes) - 1
        if (index + 1) % flush_every and not last:
            continue
        while buffered and (sum(buffered) - skip >= batch_size or last):
            plan = plan_flush(buffered, skip, batch_size)
            writes.append(sum(buffered[: plan.complete]) - skip + plan.take)
            skip = (skip if plan.complete == 0 else 0) + plan.take
            buffered = buffered[plan.complete :]
    return writes


def test_full_writes_take_exactly_batch_size_splitting_a_message() -> None:
    plan = plan_flush([16] * 63, skip=0, batch_size=1000)
    assert plan == FlushPlan(complete=62, take=8)  # 62*16 + 8 = 1000
    assert plan.spans([16] * 63, skip=0) == [(0, 16)] * 62 + [(0, 8)]


def test_the_split_message_is_finished_by_the_next_write() -> None:
    plan = plan_flush([16] * 63, skip=8, batch_size=1000)
    assert plan == FlushPlan(complete=63, take=0)  # the split one's last 8 + 62*16 = 1000
    assert plan.spans([16] * 63, skip=8) == [(8, 16)] + [(0, 16)] * 62
    assert plan_flush([16, 16], skip=8, batch_size=1000) == FlushPlan(complete=2, take=0)


def test_less_than_a_batch_is_written_whole() -> None:
    assert plan_flush([16, 3, 16], skip=0, batch_size=1000) == FlushPlan(complete=3, take=0)


def test_only_multiples_of_the_batch_size_when_more_is_buffered() -> None:
    plan = plan_flush([16] * 130, skip=0, batch_size=1000)  # 2080 points
    assert 16 * plan.complete + plan.take == 2000


def test_every_point_is_written_once_and_every_write_but_the_last_is_full() -> None:
    rng = random.Random(3)
    sizes = [rng.choice([16, 16, 16, 15, 12, 1]) for _ in range(700)]
    writes = simulate(sizes, batch_size=1000, flush_every=63)
    assert sum(writes) == sum(sizes)
    assert all(w == 1000 for w in writes[:-1])
    assert 0 < writes[-1] <= 1000
