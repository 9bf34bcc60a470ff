"""Recall@10 and latency of bench-scale's filtered search by the HNSW beam (`hnsw_ef`), side by
side on one indexed embedded collection. Figures in BENCHMARKS.md.

    PYTHONPATH=$PWD .venv/bin/python docs/search_beam.py HOME/bench-scale/qdrant [--rounds 2]

The collection a `medindex bench-scale` run leaves (its store folder, beside `data/` with the
table it ingested), opened in this process; per round and beam (Qdrant's default, which is the
build's `ef_construct`, then 128, 200, 300): 50 queries' recall@10 against exact search over
the table's vectors, and 200 random filtered searches timed, after one to warm up.

`--neighbours`: the audit's question instead (`Reader.neighbours`, as an audit's shard asks
it): the 20 nearest of 200 stored points, unfiltered, by beam (32, 64, 100, 200): ms a
question, and the share of the 5 and of the 20 nearest found, against exact search.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import qdrant_edge as edge

from pipeline.store import NeighbourRequest, SearchRequest
from pipeline.store import edge as edge_store
from producers.scale import COLLECTION, FILTER, exact_answers, store_recall

BEAMS = (100, 128, 200, 300)  # 100: Qdrant's default (the build's ef_construct)
AUDIT_BEAMS = (200, 100, 64, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the store folder of a bench-scale run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--neighbours", action="store_true", help="the audit's question")
    args = parser.parse_args()
    store = edge_store.EdgeStore(args.root)
    if args.neighbours:
        neighbour_beams(store, args.rounds)
        store.close()
        return
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


def neighbour_beams(store: edge_store.EdgeStore, rounds: int) -> None:
    ids = [hit["id"] for hit in store.scroll(COLLECTION, limit=200)["points"]]
    exact = {i: _exact(store, v) for i, v in _vectors(store, ids)}
    for round_ in range(rounds):
        for beam in AUDIT_BEAMS:
            asked = [
                NeighbourRequest(id=i, limit=20, with_payload=False, hnsw_ef=beam) for i in ids
            ]
            started = time.perf_counter()
            found = [_ids(hits) for hits in store.neighbours(COLLECTION, asked)]
            ms = 1000 * (time.perf_counter() - started) / len(ids)
            shares = {f"found_of_{n}": _share(ids, found, exact, n) for n in (5, 20)}
            print(json.dumps({"round": round_, "hnsw_ef": beam, "ms": round(ms, 2)} | shares))


def _share(ids: list[str], found: list[list[str]], exact: dict, n: int) -> float:
    """The share of each point's n nearest (itself left out) found, averaged."""
    shares = [
        len(set(f[:n]) & set(exact[i][1 : n + 1])) / n for i, f in zip(ids, found, strict=True)
    ]
    return round(float(np.mean(shares)), 4)


def _exact(store: edge_store.EdgeStore, vector: list[float]) -> list[str]:
    """The 21 nearest by exact search (the engine's own: the store asks HNSW), itself first."""
    request = edge.SearchRequest(
        query=edge.Query.Nearest(vector), limit=21, params=edge.SearchParams(exact=True),
        with_payload=False, with_vector=False,
    )  # fmt: skip
    return [str(point.id) for point in store._shard(COLLECTION).search(request)]


def _vectors(store: edge_store.EdgeStore, ids: list[str]) -> list[tuple[str, list[float]]]:
    return [(hit["id"], hit["vector"]) for hit in store.retrieve(COLLECTION, ids, True)]


def _ids(hits: list[dict]) -> list[str]:
    return [hit["id"] for hit in hits]


def _search(store: edge_store.EdgeStore, vector: list[float], beam: int) -> list[dict]:
    request = SearchRequest(vector=vector, filter=FILTER, limit=10, hnsw_ef=beam)
    return store.search(COLLECTION, request)


if __name__ == "__main__":
    main()
