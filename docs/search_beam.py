"""Recall@10 and latency of bench-scale's filtered search by the HNSW beam (`hnsw_ef`), side by
side on one indexed embedded collection. Figures in BENCHMARKS.md.

    PYTHONPATH=$PWD .venv/bin/python docs/search_beam.py HOME/bench-scale/qdrant [--rounds 2]

The collection a `medindex bench-scale` run leaves (its store folder, beside `data/` with the
table it ingested), opened in this process; per round and beam (Qdrant's default, which is the
build's `ef_construct`, then 128, 200, 300): 50 queries' recall@10 against exact search over
the table's vectors, and 200 random filtered searches timed, after one to warm up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.store import SearchRequest
from pipeline.store import edge as edge_store
from producers.scale import COLLECTION, FILTER, exact_answers, store_recall

BEAMS = (100, 128, 200, 300)  # 100: Qdrant's default (the build's ef_construct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the store folder of a bench-scale run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    store = edge_store.EdgeStore(args.root)
    queries, exact = exact_answers(args.root.parent / "data" / "Data_Entry_scale.csv")
    rng = np.random.default_rng(11)
    timed = [rng.normal(size=384).tolist() for _ in range(200)]
    for round_ in range(args.rounds):
        for beam in BEAMS:
            _search(store, timed[0], beam)
            recall = store_recall(store, queries, exact, beam)
            times = []
            for vector in timed:
                started = time.perf_counter()
                _search(store, vector, beam)
                times.append(1000 * (time.perf_counter() - started))
            p50, p95 = np.percentile(times, [50, 95])
            print(json.dumps({
                "round": round_, "hnsw_ef": beam,
                "recall_at_10": recall,
                "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            }), flush=True)  # fmt: skip
    store.close()


def _search(store: edge_store.EdgeStore, vector: list[float], beam: int) -> list[dict]:
    request = SearchRequest(vector=vector, filter=FILTER, limit=10, hnsw_ef=beam)
    return store.search(COLLECTION, request)


if __name__ == "__main__":
    main()
