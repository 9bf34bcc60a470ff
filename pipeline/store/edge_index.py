"""Index maintenance of the embedded store's live collections: the parts `EdgeStore` drives.

Edge has no background optimiser, and `optimize()` holds its process until done. So a build
runs on a copy: the store worker flushes the live shard, copies its folder (`copy_shard`) and
starts the child (`pipeline.store.edge_build`) on the copy, while searches and writes go on
to the live shard and the ids written are noted. When the child is done, those points are read
from the live shard (their latest state) and written into the built one (`catch_up`), the
collection's `meta.json` is switched to the built folder in one rename, and the shard object
replaced. Before that switch a crash leaves the live shard as it was; after it, the built one
is complete. Whatever a crash left (a build's copy, a replaced shard) is removed when the
store opens (`remove_leftovers`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import qdrant_edge as edge

log = logging.getLogger(__name__)

LIVE_SHARD = "shard"  # the live shard's folder where meta.json names none (made before builds)
CATCH_UP_CHUNK = 1000  # points read from the live shard and written into the built one a call


@dataclass
class Build:
    """One collection's build in progress: the child, its copy, the ids written meanwhile."""

    folder: Path
    process: subprocess.Popen
    written: set = field(default_factory=set)  # point ids (as Edge takes them) since the copy


def new_shard_folder(collection: Path) -> Path:
    return collection / f"shard-{uuid.uuid4().hex[:12]}"


def copy_shard(live: Path, to: Path) -> None:
    """The flushed live shard's folder, copied; its write-ahead log's segments are allocated
    32 MiB each but mostly holes, kept holes (`--sparse`)."""
    subprocess.run(["cp", "-r", "--sparse=always", str(live), str(to)], check=True)


def unindexed(info: edge.ShardInfo) -> int:
    """Points outside the HNSW index (searched by brute force)."""
    return max(0, info.points_count - info.indexed_vectors_count)


def catch_up(live: edge.EdgeShard, built: edge.EdgeShard, ids: Iterable) -> int:
    """Points written to the live shard since its copy, in their latest state, written into
    the built one; returns how many."""
    ids = list(ids)
    for start in range(0, len(ids), CATCH_UP_CHUNK):
        records = live.retrieve(ids[start : start + CATCH_UP_CHUNK], True, True)
        points = [edge.Point(r.id, r.vector, r.payload or {}) for r in records]
        if points:
            built.update(edge.UpdateOperation.upsert_points(points))
    return len(ids)


def copy_missing_indexes(live: edge.EdgeShard, built: edge.EdgeShard) -> None:
    """Payload indexes created on the live shard during the build (a new source's fields)."""
    have = built.info().payload_schema
    for name, index in live.info().payload_schema.items():
        if name not in have:
            built.update(edge.UpdateOperation.create_field_index(name, index.data_type))


def remove_leftovers(collection: Path, live_shard: str) -> None:
    """Every folder of a collection but its live shard: a build's copy or a replaced shard a
    crash left (their builder died with the store worker that started it)."""
    for path in collection.iterdir():
        if path.is_dir() and path.name != live_shard:
            log.info("removing %s, left by an index build that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)
