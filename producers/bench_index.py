"""Index maintenance on a live collection, measured in-process (issue 23, item 1):
`python -m producers.bench_index --points 100000`.

One embedded collection (as `medindex ingest` makes it: HNSW m=16, two payload indexes) is
written N clustered 384-d points, 1,000 a call. Then, side by side: searches before the build
(brute force after the payload-index filter), the build (`start_index` until `index_ready`)
while this thread keeps searching (every 0.05 s) and writing (1,000 points every 20th search,
up to N/10), and the same searches after it, with their recall@10 against exact search. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.store import SearchRequest
from pipeline.store.edge import EdgeStore
from pipeline.store.edge_index import copy_shard

DIM, CLUSTERS, BATCH = 384, 64, 1000
SPEC = {"dim": DIM, "payload_indexes": {"group": "keyword", "age": "integer"}}
# A keyword and a range condition: a third of the groups, ages 40 to 59: about 7 % of points.
FILTER = {
    "must": [
        {"key": "group", "match": {"any": ["g0", "g1", "g2"]}},
        {"key": "age", "range": {"gte": 40, "lt": 60}},
    ]
}


def points(start: int, stop: int) -> tuple[list[str], np.ndarray, list[dict]]:
    """Clustered vectors (64 centres plus noise of their scale), as embeddings are."""
    rng = np.random.default_rng(start)
    centres = np.random.default_rng(0).normal(size=(CLUSTERS, DIM))
    vectors = centres[rng.integers(0, CLUSTERS, stop - start)] + rng.normal(
        size=(stop - start, DIM)
    )
    ids = [str(i + 1) for i in range(start, stop)]
    payloads = [{"group": f"g{i % 9}", "age": i % 100} for i in range(start, stop)]
    return ids, vectors.astype(np.float32), payloads


def run(root: Path, n: int, searches: int) -> dict:
    store = EdgeStore(root, index_after_points=10**9)  # no build before the one measured
    store.ensure_collection("bench", SPEC)
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        store.upsert("bench", *points(start, min(n, start + BATCH)))
    load_s = time.perf_counter() - started
    queries = np.random.default_rng(1).normal(size=(searches, DIM)).astype(np.float32)
    before = _searches(store, queries)

    during: list[float] = []
    writes: list[float] = []
    written = n
    started = time.perf_counter()
    store.start_index("bench")
    while not store.index_ready("bench"):
        during.append(_timed(store.search, "bench", _request(queries[len(during) % 50])))
        if len(during) % 20 == 0 and written < n + n // 10:  # up to 10 % more, as they come
            batch = points(written, written + BATCH)
            writes.append(_timed(store.upsert, "bench", *batch))
            written += BATCH
        time.sleep(0.05)
    build_s = time.perf_counter() - started
    after = _searches(store, queries)
    info = store.collection_info("bench")
    live = root / "collections" / "bench" / store._meta("bench")["shard"]
    copy_s = _timed(copy_shard, live, root / "copy-timed") / 1000
    store.close()
    return {
        "points": n,
        "load_points_per_s": round(n / load_s),
        "build_s": round(build_s, 1),
        "copy_s": round(copy_s, 2),
        "written_during_build": written - n,
        "write_during_build_p50_ms": _pct(writes, 50),
        "write_during_build_max_ms": round(max(writes), 1) if writes else None,
        "search_before_p50_ms": _pct(before["ms"], 50),
        "search_before_p95_ms": _pct(before["ms"], 95),
        "search_during_build_p50_ms": _pct(during, 50),
        "search_during_build_p95_ms": _pct(during, 95),
        "search_after_p50_ms": _pct(after["ms"], 50),
        "search_after_p95_ms": _pct(after["ms"], 95),
        "p50_before_over_after": round(_pct(before["ms"], 50) / _pct(after["ms"], 50), 1),
        "recall_at_10_before": _recall(before["hits"][:50], _exact(n, queries[:50])),
        "recall_at_10_after": _recall(after["hits"][:50], _exact(written, queries[:50])),
        "indexed_points": info["indexed_points"],
        "unindexed_points": info["unindexed_points"],
    }


def _request(query: np.ndarray) -> SearchRequest:
    return SearchRequest(vector=query.tolist(), filter=FILTER, limit=10, with_payload=False)


def _searches(store: EdgeStore, queries: np.ndarray) -> dict:
    ms, hits = [], []
    for query in queries:
        started = time.perf_counter()
        found = store.search("bench", _request(query))
        ms.append((time.perf_counter() - started) * 1000)
        hits.append([h["id"] for h in found])
    return {"ms": ms, "hits": hits}


def _exact(n: int, queries: np.ndarray) -> list[list[str]]:
    """Each query's filtered top 10 by cosine over every point written, in numpy."""
    vectors = np.concatenate([points(s, min(n, s + BATCH))[1] for s in range(0, n, BATCH)])
    keep = np.array([(i % 9) < 3 and 40 <= i % 100 < 60 for i in range(n)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    scores[:, ~keep] = -np.inf
    return [[str(i + 1) for i in np.argsort(-row)[:10]] for row in scores]


def _recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return round(
        float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])), 3
    )


def _timed(call: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    call(*args)
    return (time.perf_counter() - started) * 1000


def _pct(values: list[float], q: int) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as root:
        result = run(Path(root), args.points, args.searches)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
