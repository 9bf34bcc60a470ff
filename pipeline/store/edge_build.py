"""A collection's HNSW index, built in a process of its own: Qdrant Edge's `optimize()` holds
its process (the GIL included) until done, so the store worker starts this child and keeps
serving; the child owns the shard until the index is ready.

Run as `python -m pipeline.store.edge_build SHARD_DIR DIM M` (see `builder_argv`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import qdrant_edge as edge

HNSW_M = 16


def hnsw(m: int) -> edge.HnswIndexConfig:
    """Qdrant's defaults; m=0 defers the graph (bulk load)."""
    return edge.HnswIndexConfig(m=m, ef_construct=100, full_scan_threshold=10_000)


def vector_config(dim: int, m: int) -> edge.EdgeConfig:
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine),
        hnsw_config=hnsw(m),
    )


def builder_argv(shard_path: Path, dim: int, m: int) -> list[str]:
    """The child's command line."""
    return [sys.executable, "-m", __name__, str(shard_path), str(dim), str(m)]


def build_index(shard_path: str, dim: int, m: int) -> None:
    """Open the shard with HNSW enabled and optimise it: the slow part, in its own process."""
    shard = edge.EdgeShard.load(shard_path, vector_config(dim, m))
    started = time.perf_counter()
    shard.optimize()
    shard.close()
    print(f"indexed {shard_path} in {time.perf_counter() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    build_index(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
