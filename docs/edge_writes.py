"""Where a 1,000-point write into Qdrant Edge spends its time, the steps side by side, the way
`EdgeStore.upsert` takes them before and after issue 23 (item 6). Figures in BENCHMARKS.md.

    PYTHONPATH=$PWD .venv/bin/python docs/edge_writes.py [--rounds 9]

Per round, one collection of the bench's kind (384-d, the skin-lesion payloads of
`medindex bench` and their five payload indexes) takes a fresh 1,000-point write, its steps
timed apart: the vectors as Python lists (`ndarray.tolist()`, as before) against the rows as
buffers (`memoryview`, now); Edge's `Point`s built with and without the payloads (the
binding converts each payload dict in Python-held code); `update`; and `flush`, which a write
no longer waits for (see `MEDINDEX_STORE_FLUSH_S`). Medians over the rounds, in ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import qdrant_edge as edge

from pipeline.samples.skin import sample_metadata
from pipeline.store.edge import EdgeStore
from producers.bench import DIM, SEARCH_SPEC

SIZE = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    steps: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp))
        store.ensure_collection("bench", SEARCH_SPEC)
        shard = store._shard("bench")  # the engine itself: each step timed on its own
        for n in range(args.rounds):
            one_write(shard, n, steps)
        store.close()
    print(json.dumps({step: round(float(np.median(ms)), 2) for step, ms in steps.items()}))


def one_write(shard: edge.EdgeShard, n: int, steps: dict[str, list[float]]) -> None:
    vectors = np.random.default_rng(n).random((SIZE, DIM), dtype=np.float32)
    payloads = sample_metadata(SIZE, seed=n)
    ids = range(n * SIZE + 1, (n + 1) * SIZE + 1)
    with timed(steps, "tolist"):
        lists = vectors.tolist()
    with timed(steps, "points_from_lists"):
        [edge.Point(i, v) for i, v in zip(ids, lists, strict=True)]
    with timed(steps, "points_from_buffers"):
        [edge.Point(i, memoryview(v)) for i, v in zip(ids, vectors, strict=True)]
    with timed(steps, "points_from_buffers_with_payloads"):
        points = [
            edge.Point(i, memoryview(v), p) for i, v, p in zip(ids, vectors, payloads, strict=True)
        ]
    with timed(steps, "update"):
        shard.update(edge.UpdateOperation.upsert_points(points))
    with timed(steps, "flush"):
        shard.flush()


@contextmanager
def timed(steps: dict[str, list[float]], step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    steps.setdefault(step, []).append((time.perf_counter() - started) * 1000)


if __name__ == "__main__":
    main()
