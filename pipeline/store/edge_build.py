"""A collection's HNSW index, built in a process of its own: Qdrant Edge's `optimize()` holds
its process until done, so the store worker copies the live shard, starts this child on the
copy and keeps serving the live one (see `pipeline.store.edge_index`).

Run as `python -m pipeline.store.edge_build SHARD_DIR DIM M QUANTIZATION ON_DISK PARENT_PID`
(see `builder_argv`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import qdrant_edge as edge

# int8: Qdrant's scalar quantization, kept in RAM, searches rescored on the float32 originals
# (fetching `RESCORE_OVERSAMPLING` times the hits on the quantized vectors), and the search's
# HNSW beam: the same as a server collection's.
from pipeline.store.spec import INT8_QUANTILE, RESCORE_OVERSAMPLING, SEARCH_HNSW_EF

HNSW_M = 16
# A build indexes every segment, however small (Qdrant's default leaves segments under 10 MB,
# about 6,600 384-d points, unindexed): an indexed collection then has no point outside it.
BUILD_INDEXING_THRESHOLD_KB = 1
PR_SET_PDEATHSIG = 1


def hnsw(m: int) -> edge.HnswIndexConfig:
    """Qdrant's defaults; m=0 defers the graph (bulk load)."""
    return edge.HnswIndexConfig(m=m, ef_construct=100, full_scan_threshold=10_000)


def vector_config(
    dim: int,
    m: int,
    quantization: str = "none",
    on_disk: bool = False,
    indexing_threshold_kb: int | None = None,
) -> edge.EdgeConfig:
    """The shard's configuration; `on_disk`: the float32 originals on disk behind the page
    cache (with int8, only the oversampled candidates' originals are read)."""
    int8 = edge.ScalarQuantizationConfig(edge.ScalarType.Int8, INT8_QUANTILE, always_ram=True)
    optimizers = (
        None
        if indexing_threshold_kb is None
        else edge.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
    )
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(
            size=dim, distance=edge.Distance.Cosine, on_disk=on_disk or None
        ),
        hnsw_config=hnsw(m),
        quantization_config=int8 if quantization == "int8" else None,
        optimizers=optimizers,
    )


def search_params(quantization: str, hnsw_ef: int | None = None) -> edge.SearchParams:
    """The search's HNSW beam (SEARCH_HNSW_EF unless given); for a quantized collection,
    rescoring on the originals."""
    rescored = edge.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
    return edge.SearchParams(
        hnsw_ef=hnsw_ef or SEARCH_HNSW_EF,
        quantization=None if quantization == "none" else rescored,
    )


def builder_argv(
    shard_path: Path, dim: int, m: int, quantization: str = "none", on_disk: bool = False
) -> list[str]:
    """The child's command line."""
    layout = [quantization, str(int(on_disk))]
    return [sys.executable, "-m", __name__, str(shard_path), str(dim), str(m), *layout,
            str(os.getpid())]  # fmt: skip


def die_with_parent(parent: int) -> None:
    """A build nobody will swap in is wasted work (its store worker died: the next one
    removes the copy), so the child goes when its parent does (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was made
        sys.exit(1)


def build_index(
    shard_path: str, dim: int, m: int, quantization: str = "none", on_disk: bool = False
) -> None:
    """Open the shard with HNSW enabled and optimise it: the slow part, in its own process."""
    config = vector_config(dim, m, quantization, on_disk, BUILD_INDEXING_THRESHOLD_KB)
    shard = edge.EdgeShard.load(shard_path, config)
    started = time.perf_counter()
    shard.optimize()
    shard.close()
    print(f"indexed {shard_path} in {time.perf_counter() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    die_with_parent(int(sys.argv[6]))
    build_index(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1")
