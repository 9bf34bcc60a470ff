"""Issue 23, item 1, on the system tier's `medindex up`: a live embedded collection past
`index_after_points` (the default, 20,000) has its HNSW index built in the background while the
store worker answers its searches and writes it; an ingest's end builds it again; a SIGKILL of
the builder or of the store worker mid-build leaves a collection that answers with every point
and is indexed later. Points arrive as the embed step sends them (1,000 a message): 21,000
random 384-d points in seconds, where embedding them would take the tier half an hour."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
from jobs import (
    AS_INGEST_MAKES_IT,
    assert_exactly_indexed,
    dataset_keys,
    finish,
    log,
    point_message,
    send_points,
    start_ingest,
    wait_for_log,
)

from pipeline.settings import get_settings
from pipeline.store import Admin, SearchRequest
from producers.drills.chaos import kill_and_wait_for_restart
from producers.harness import RunningStack

CHUNK = 1000  # points a message


def test_a_live_collection_is_indexed_while_it_answers_and_takes_writes(
    stack: RunningStack, store: Admin, small: Path
) -> None:
    name = "live_index"
    started, built = _logged(stack, name)
    n = _past_threshold(store, name)
    wait_for_log(stack, f"building the index of {name} in process", started, timeout_s=180)
    searches = writes = 0
    while log(stack).count(f"{name}: index built and swapped in") <= built:
        hits = store.search(name, SearchRequest(vector=[0.1] * 384, limit=5))
        assert len(hits) == 5
        searches += 1
        send_points(point_message(name, name, range(n + 16 * writes, n + 16 * (writes + 1))))
        writes += 1
        time.sleep(0.2)
    assert searches > 3 and writes > 3, (searches, writes)  # answered, written meanwhile
    total = n + 16 * writes
    _wait_until(lambda: store.count(name) == total)
    # An ingest's end asks for a build: its images and the points written meanwhile indexed.
    finish(start_ingest(stack, small, name, "live-index"))
    _wait_until(lambda: _counts(store, name) == (total + len(dataset_keys(small)), 0))
    expected = {f"{name}-{row}" for row in range(total)} | dataset_keys(small)
    assert_exactly_indexed(store, name, expected)


def test_a_killed_builder_leaves_every_point_answering_and_the_next_ask_indexes_it(
    stack: RunningStack, store: Admin
) -> None:
    name = "killed_builder"
    n, builder, _ = _building(stack, store, name)
    builder.kill()
    wait_for_log(stack, f"building the index of {name!r} failed", 0, timeout_s=60)
    assert _counts(store, name) == (n, n)  # every point, none indexed: the live shard as it was
    assert len(store.search(name, SearchRequest(vector=[0.1] * 384, limit=5))) == 5
    assert _shard_folders(name) == ["shard"]  # the build's copy removed
    store.start_index(name)  # what the next ingest's end asks
    _wait_until(lambda: _counts(store, name) == (n, 0))
    assert_exactly_indexed(store, name, {f"{name}-{row}" for row in range(n)})


def test_a_store_worker_killed_mid_build_comes_back_with_every_point_and_builds_again(
    stack: RunningStack, store: Admin
) -> None:
    name = "killed_store_build"
    n, builder, built = _building(stack, store, name)
    assert kill_and_wait_for_restart(psutil.Process(stack.process.pid), "store worker")
    builder.wait(timeout=10)  # gone with the store worker, not left building a dead copy
    assert store.count(name) == n  # the restarted worker opens the store: every point
    # The build asked for and never swapped in starts again on its own.
    wait_for_log(stack, f"{name}: index built and swapped in", built, timeout_s=180)
    assert _counts(store, name) == (n, 0)
    assert _live_shard(name) != "shard"  # the built one, swapped in
    # The killed build's copy removed at the open; the replaced shard once no search needs it.
    _wait_until(lambda: _shard_folders(name) == [_live_shard(name)], timeout_s=30)
    assert_exactly_indexed(store, name, {f"{name}-{row}" for row in range(n)})


def _building(stack: RunningStack, store: Admin, name: str) -> tuple[int, psutil.Process, int]:
    """A collection written past the threshold, once its build started: its points, its
    builder, and how often a build of it had been swapped in before."""
    started, built = _logged(stack, name)
    n = _past_threshold(store, name)
    wait_for_log(stack, f"building the index of {name} in process", started, timeout_s=180)
    return n, _builder(stack, name), built


def _past_threshold(store: Admin, name: str) -> int:
    """A collection made as ingest makes it, written past the threshold by point messages."""
    store.ensure_collection(name, AS_INGEST_MAKES_IT)
    n = get_settings().index_after_points + CHUNK
    for start in range(0, n, CHUNK):
        send_points(point_message(name, name, range(start, start + CHUNK)))
    _wait_until(lambda: store.count(name) == n)
    return n


def _logged(stack: RunningStack, name: str) -> tuple[int, int]:
    """How often the stack's log said so far that a build of `name` started, and ended."""
    text = log(stack)
    started = text.count(f"building the index of {name} in process")
    return started, text.count(f"{name}: index built and swapped in")


def _counts(store: Admin, name: str) -> tuple[int, int]:
    info = store.collection_info(name)
    return info["points"], info["unindexed_points"]


def _builder(stack: RunningStack, name: str) -> psutil.Process:
    for process in psutil.Process(stack.process.pid).children(recursive=True):
        cmdline = " ".join(process.cmdline())
        if "pipeline.store.edge_build" in cmdline and f"/{name}/" in cmdline:
            return process
    raise AssertionError(f"no builder of {name} running")


def _folder(name: str) -> Path:
    return get_settings().embedded_store_path / "collections" / name


def _shard_folders(name: str) -> list[str]:
    return sorted(p.name for p in _folder(name).iterdir() if p.is_dir())


def _live_shard(name: str) -> str:
    return json.loads((_folder(name) / "meta.json").read_text()).get("shard", "shard")


def _wait_until(condition: object, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)
