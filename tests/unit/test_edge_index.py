"""Issue 23, item 1: a live embedded collection gets its HNSW index in the background, built on
a copy by a child process and swapped in, while it goes on answering searches and taking writes;
a crash of the builder or of the store's process at any step leaves a collection that opens,
answers with every point and is indexed later. Small shards and a low threshold: seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.schemas import point_id
from pipeline.store import SearchRequest, StoreError, finish_bulk
from pipeline.store.edge import EdgeStore
from pipeline.store.points import every_point

DIM = 16
THRESHOLD = 300
SPEC = {"dim": DIM, "payload_indexes": {"part": "keyword"}}


def _points(start: int, stop: int, part: str) -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(start)
    ids = [point_id("live", "train", f"img-{i}") for i in range(start, stop)]
    vectors = rng.normal(size=(stop - start, DIM)).astype(np.float32)
    return ids, vectors, [{"i": i, "part": part} for i in range(start, stop)]


def _wait(condition: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _only_the_live_shard(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in (root / "collections" / name).iterdir() if p.is_dir())


def test_a_live_collection_is_indexed_while_it_answers_and_takes_writes(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", index_after_points=THRESHOLD, index_poll_s=0.05)
    store.ensure_collection("c", SPEC)
    store.upsert("c", *_points(0, THRESHOLD, "first"))  # the threshold: a build starts
    _wait(lambda: "c" in store._builds)
    written, during_build, searched = THRESHOLD, 0, 0
    deadline = time.monotonic() + 120
    while "c" in store._builds or during_build == 0:
        building = "c" in store._builds
        # New points, and points of the copy written again (their latest state must win).
        store.upsert("c", *_points(written, written + 10, "during"))
        store.upsert("c", *_points(written - THRESHOLD, written - THRESHOLD + 10, "rewritten"))
        written += 10
        during_build += building
        query = SearchRequest(vector=[1.0] * DIM, limit=5)
        assert len(store.search("c", query)) == 5
        searched += 1
        assert time.monotonic() < deadline, "the build never finished"
        time.sleep(0.01)  # a stream of writes, not a loop as fast as the store takes it
    assert during_build > 0 and searched > 0
    finish_bulk(store, "c", timeout_s=60, poll_s=0.05)  # what an ingest's end asks for
    info = store.collection_info("c")
    assert info["points"] == store.count("c") == written
    assert (info["indexed_points"], info["unindexed_points"]) == (written, 0)
    latest = {h["payload"]["i"]: h["payload"]["part"] for h in every_point(store, "c")}
    assert len(latest) == written
    assert all(part == "rewritten" for i, part in latest.items() if i < written - THRESHOLD)
    assert info["payload_indexes"] == {"part": "keyword"}
    _wait(lambda: len(_only_the_live_shard(tmp_path / "edge", "c")) == 1)  # the old one gone
    store.close()
    reopened = EdgeStore(tmp_path / "edge")
    assert reopened.collection_info("c")["indexed_points"] == written
    reopened.close()


def test_an_ingest_ending_during_a_build_finds_every_point_indexed(tmp_path: Path) -> None:
    """The ingest's last points land during a threshold's build, and its end asks for the
    index then: the points the build caught up are indexed by the next build, before
    `index_ready` says yes."""
    store = EdgeStore(tmp_path / "edge", index_after_points=THRESHOLD, index_poll_s=0.05)
    store.ensure_collection("c", SPEC)
    store.upsert("c", *_points(0, THRESHOLD, "first"))
    _wait(lambda: "c" in store._builds)
    store.upsert("c", *_points(THRESHOLD, THRESHOLD + 50, "last"))  # during the build
    assert "c" in store._builds
    finish_bulk(store, "c", timeout_s=60, poll_s=0.05)  # the ingest's end, mid-build
    info = store.collection_info("c")
    assert (info["indexed_points"], info["unindexed_points"]) == (THRESHOLD + 50, 0)
    store.close()


def test_a_field_indexed_during_a_build_is_in_the_built_shard(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", index_after_points=THRESHOLD, index_poll_s=0.05)
    store.ensure_collection("c", SPEC)
    store.upsert("c", *_points(0, THRESHOLD, "first"))
    _wait(lambda: "c" in store._builds)
    store.ensure_collection("c", SPEC | {"payload_indexes": {"part": "keyword", "i": "integer"}})
    finish_bulk(store, "c", timeout_s=60, poll_s=0.05)
    assert store.collection_info("c")["payload_indexes"] == {"part": "keyword", "i": "integer"}
    store.close()


def test_a_bulk_load_is_indexed_once_by_its_finish_not_by_the_threshold(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", index_after_points=THRESHOLD, index_poll_s=0.05)
    store.ensure_collection("c", SPEC, bulk=True)
    store.upsert("c", *_points(0, 2 * THRESHOLD, "first"))
    time.sleep(0.3)  # several maintenance rounds
    assert "c" not in store._builds and "c" not in store._wanted
    finish_bulk(store, "c", timeout_s=60, poll_s=0.05)
    assert store.collection_info("c")["indexed_points"] == 2 * THRESHOLD
    store.upsert("c", *_points(2 * THRESHOLD, 3 * THRESHOLD, "later"))  # now a live collection
    _wait(lambda: store.collection_info("c")["indexed_points"] == 3 * THRESHOLD)
    store.close()


def test_a_killed_builder_leaves_the_collection_answering_and_a_later_build_indexes_it(
    tmp_path: Path,
) -> None:
    store = EdgeStore(tmp_path / "edge", index_after_points=THRESHOLD, index_poll_s=0.05)
    store.ensure_collection("c", SPEC)
    store.upsert("c", *_points(0, THRESHOLD, "first"))
    _wait(lambda: "c" in store._builds)
    os.kill(store._builds["c"].process.pid, signal.SIGKILL)
    _wait(lambda: "c" not in store._builds)
    assert store.count("c") == THRESHOLD
    assert store.collection_info("c")["unindexed_points"] == THRESHOLD
    assert _only_the_live_shard(tmp_path / "edge", "c") == ["shard"]  # its copy removed
    with pytest.raises(StoreError, match="building the index of 'c' failed"):
        store.index_ready("c")  # told once: the next ask builds again
    finish_bulk(store, "c", timeout_s=60, poll_s=0.05)
    assert store.collection_info("c")["indexed_points"] == THRESHOLD
    store.close()


# A store process whose first write crosses the threshold; each script goes on from there.
THRESHOLD_CROSSED = """
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.unit.test_edge_index import THRESHOLD, SPEC, _points
from pipeline.store.edge import EdgeStore
store = EdgeStore(Path(sys.argv[1]), index_after_points=THRESHOLD, index_poll_s=0.05)
store.ensure_collection("c", SPEC)
store.upsert("c", *_points(0, THRESHOLD, "first"))
"""

KILLED_MID_BUILD = (
    THRESHOLD_CROSSED
    + """
while "c" not in store._builds:
    time.sleep(0.01)
store.upsert("c", *_points(THRESHOLD, THRESHOLD + 50, "during"))
print(store._builds["c"].process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
)


def test_a_store_killed_mid_build_reopens_with_every_point_and_builds_again(
    tmp_path: Path,
) -> None:
    """The store's process killed while its child builds: the child dies with it, the next
    store removes the copy, answers with every point, and builds the index it was asked for."""
    root = tmp_path / "edge"
    builder = int(_run_until_killed(KILLED_MID_BUILD, root).stdout.split()[0])
    _wait(lambda: not _alive(builder), timeout_s=10)  # gone with its parent
    assert len(_only_the_live_shard(root, "c")) == 2  # the live shard and the build's copy
    store = EdgeStore(root, index_after_points=THRESHOLD, index_poll_s=0.05)
    assert _only_the_live_shard(root, "c") == ["shard"]
    assert store.count("c") == THRESHOLD + 50
    _wait(lambda: store.collection_info("c")["indexed_points"] == THRESHOLD + 50)
    assert store.count("c") == THRESHOLD + 50
    store.close()


KILLED_AFTER_SWAP = (
    THRESHOLD_CROSSED
    + """
while store._meta("c").get("shard", "shard") == "shard":  # until the switch
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)  # the replaced shard not removed yet
"""
)


def test_a_store_killed_just_after_the_switch_opens_the_built_shard(tmp_path: Path) -> None:
    root = tmp_path / "edge"
    _run_until_killed(KILLED_AFTER_SWAP, root)
    assert "shard" in _only_the_live_shard(root, "c")  # the replaced one, left behind
    store = EdgeStore(root, index_after_points=THRESHOLD)
    live = store._meta("c")["shard"]
    assert _only_the_live_shard(root, "c") == [live] != ["shard"]
    assert store.collection_info("c")["indexed_points"] == store.count("c") == THRESHOLD
    store.close()


def _run_until_killed(script: str, root: Path) -> subprocess.CompletedProcess:
    """Run one of the scripts above in a process of its own, which SIGKILLs itself."""
    killed = subprocess.run(
        [sys.executable, "-c", script, str(root), str(Path(__file__).parents[2])],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return killed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"
