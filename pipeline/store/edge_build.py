"""A collection's HNSW index, built in a process of its own: Qdrant Edge's `optimize()` holds
its process (the GIL included) until done, so the store worker starts this child and keeps
serving; the child owns the shard until the index is ready.

Run as `python -m pipeline.store.edge_build SHARD_DIR DIM M QUANTIZATION ON_DISK` (see
`builder_argv`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import qdrant_edge as edge

HNSW_M = 16
# int8: Qdrant's scalar quantization, kept in RAM, searches rescored on the float32 originals
# (fetching `RESCORE_OVERSAMPLING` times the hits on the quantized vectors), the same as a
# server collection's (pipeline.store.layout).
INT8_QUANTILE = 0.99  # clip the 1 % extreme values: int8 keeps its range for the rest
RESCORE_OVERSAMPLING = 2.0


def hnsw(m: int) -> edge.HnswIndexConfig:
    """Qdrant's defaults; m=0 defers the graph (bulk load)."""
    return edge.HnswIndexConfig(m=m, ef_construct=100, full_scan_threshold=10_000)


def vector_config(
    dim: int, m: int, quantization: str = "none", on_disk: bool = False
) -> edge.EdgeConfig:
    """The shard's configuration; `on_disk`: the float32 originals on disk behind the page
    cache (with int8, only the oversampled candidates' originals are read)."""
    int8 = edge.ScalarQuantizationConfig(edge.ScalarType.Int8, INT8_QUANTILE, always_ram=True)
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(
            size=dim, distance=edge.Distance.Cosine, on_disk=on_disk or None
        ),
        hnsw_config=hnsw(m),
        quantization_config=int8 if quantization == "int8" else None,
    )


def search_params(quantization: str) -> edge.SearchParams | None:
    """Rescoring on the original vectors, for a quantized collection."""
    if quantization == "none":
        return None
    rescored = edge.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
    return edge.SearchParams(quantization=rescored)


def builder_argv(
    shard_path: Path, dim: int, m: int, quantization: str = "none", on_disk: bool = False
) -> list[str]:
    """The child's command line."""
    layout = [quantization, str(int(on_disk))]
    return [sys.executable, "-m", __name__, str(shard_path), str(dim), str(m), *layout]


def build_index(
    shard_path: str, dim: int, m: int, quantization: str = "none", on_disk: bool = False
) -> None:
    """Open the shard with HNSW enabled and optimise it: the slow part, in its own process."""
    shard = edge.EdgeShard.load(shard_path, vector_config(dim, m, quantization, on_disk))
    started = time.perf_counter()
    shard.optimize()
    shard.close()
    print(f"indexed {shard_path} in {time.perf_counter() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    build_index(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1")
