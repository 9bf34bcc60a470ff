"""The page's embedding map (`/collections/{c}/map`) of a collection that grows while it is
polled: one map per version, made again at most every MEDINDEX_MAP_REFRESH_S, never one per
point count. Real server, real workers; Flower counts the map tasks sent."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from support import sample_dataset
from test_http import serving
from test_operations import flower

from pipeline.messages import MAP_TASK
from producers.harness import RunningStack

COLLECTION = "growing"
FIRST, SECOND = 48, 160  # images of the first ingest, then of the one polled through


def ready_map(api: httpx.Client, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while (answer := api.get(f"/collections/{COLLECTION}/map")).status_code != 200:
        assert answer.status_code == 202 and "failed" not in answer.text, answer.text
        assert time.monotonic() < deadline, "the map was not made"
        time.sleep(1)
    return answer.json()


def map_tasks(since: float, expected: int, settle_s: float = 2, timeout_s: float = 60) -> int:
    """Map tasks Flower saw sent since `since` (epoch seconds): once it has seen `expected`
    and `settle_s` more have passed, in which one more sent meanwhile would show too (its task
    events carry no arguments: tests run one at a time, so these are this test's)."""
    deadline = time.monotonic() + timeout_s
    while _map_tasks(since) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(settle_s)
    return _map_tasks(since)


def _map_tasks(since: float) -> int:
    tasks = flower(f"/api/tasks?taskname={MAP_TASK}").json().values()
    return sum((task["sent"] or task["received"] or 0) >= since for task in tasks)


def test_polling_a_growing_collection_asks_for_one_map(stack: RunningStack, tmp_path: Path) -> None:
    since = time.time()
    first = sample_dataset(tmp_path / "first", FIRST, seed=21)
    second = sample_dataset(tmp_path / "second", SECOND, seed=22)
    done = stack.medindex("ingest", "--dataset", str(first), "--collection", COLLECTION)
    assert done.returncode == 0, done.stderr
    with serving(stack.env | {"MEDINDEX_MAP_REFRESH_S": "600"}, "serve-map.log") as api:
        made = ready_map(api)
        assert len(made["ids"]) == FIRST  # every point of a small collection
        started = stack.medindex(
            "ingest", "--dataset", str(second), "--collection", COLLECTION, "--no-wait"
        )
        assert started.returncode == 0, started.stderr
        counts, answers = [], []
        deadline = time.monotonic() + 300
        while not counts or counts[-1] < FIRST + SECOND:  # polled as the page polls
            counts.append(api.get(f"/collections/{COLLECTION}/count").json()["count"])
            answers.append(api.get(f"/collections/{COLLECTION}/map"))  # at least that count
            assert time.monotonic() < deadline, f"the ingest did not end: {counts[-1]}"
            time.sleep(1)
        assert len(set(counts)) >= 2, counts  # it grew while polled
        assert map_tasks(since, 1) == 1, sorted(set(counts))
        # Served at once, all along: the map made, until a newer one is due.
        shown = {(a.status_code, len(a.json().get("ids", ()))) for a in answers}
        assert shown == {(200, FIRST)}
    refreshing = stack.env | {"MEDINDEX_MAP_REFRESH_S": "1"}
    with serving(refreshing, "serve-map-refresh.log") as api:
        deadline = time.monotonic() + 240
        while len((kept := ready_map(api))["ids"]) != FIRST + SECOND:
            assert len(kept["ids"]) == FIRST  # the old one, while the new one is made
            assert time.monotonic() < deadline, "the map was not made again"
            time.sleep(1)
        assert kept["points"] == FIRST + SECOND
    assert map_tasks(since, 2) == 2
