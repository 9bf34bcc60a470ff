"""Searches while a thread writes, in one process, side by side: Edge writes in one 1,000-point
update that never gives way, against writes in slices that give way to running searches
(`pipeline.store.edge.WRITE_SLICE`, `READ_PRIORITY_S`), alternated.

    PYTHONPATH=$PWD .venv/bin/python docs/search_during_writes.py [--points 60000] [--rounds 3]

The store worker's two threads, without the broker: one writes 1,000-point calls with the
scale bench's payload and indexes, the other does a search's work on the query thread (the
request read from JSON and typed, the filtered search, the hits as JSON). Prints p50 / p95 ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from pipeline.store import edge as edge_store
from pipeline.store.edge import EdgeStore
from pipeline.store.types import SearchRequest

FILTER = {
    "must": [
        {"key": "patient_gender", "match": {"value": "F"}},
        {"key": "patient_age", "range": {"gte": 40, "lt": 60}},
    ]
}
INDEXES = {"patient_gender": "keyword", "patient_age": "integer", "patient_id": "keyword",
           "finding_labels": "keyword"}  # fmt: skip
WRITE = 1000


def write_call(store: EdgeStore, rng: np.random.Generator, first: int) -> None:
    ids = [str(uuid.UUID(int=first + i)) for i in range(WRITE)]
    payloads = [
        {"image_index": f"{first + i:08d}_000.png", "finding_labels": ["Effusion", "Mass"],
         "patient_id": str(i % 500), "patient_age": i % 90, "patient_gender": "MF"[i % 2],
         "view_position": "PA", "source": {"key": f"{first + i}", "dataset": "scale"}}
        for i in range(WRITE)
    ]  # fmt: skip
    store.upsert("c", ids, rng.standard_normal((WRITE, 384)).astype(np.float32), payloads)


def search(store: EdgeStore, rng: np.random.Generator) -> float:
    started = time.perf_counter()
    asked = json.dumps({"vector": rng.standard_normal(384).tolist(), "filter": FILTER})
    hits = store.search("c", SearchRequest.model_validate_json(asked))
    json.dumps(hits)
    return 1000 * (time.perf_counter() - started)


def during_writes(store: EdgeStore, rng: np.random.Generator, first: int) -> list[float]:
    going = threading.Event()
    going.set()

    def writes() -> None:
        n = first
        while going.is_set():
            write_call(store, rng, n)
            n += WRITE

    writer = threading.Thread(target=writes)
    writer.start()
    time.sleep(0.2)
    times = []
    for _ in range(60):
        times.append(search(store, rng))
        time.sleep(0.02)
    going.clear()
    writer.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        store = EdgeStore(Path(folder))
        store.ensure_collection("c", {"dim": 384, "payload_indexes": INDEXES})
        for first in range(0, args.points, WRITE):
            write_call(store, rng, first)
        alone = [search(store, rng) for _ in range(40)]
        print(f"{args.points:,} points, searching alone: p50 {np.percentile(alone, 50):.1f} ms")
        sliced = edge_store.WRITE_SLICE, edge_store.READ_PRIORITY_S
        slices = {
            "one update, not giving way": (WRITE, 0.0),
            f"slices of {sliced[0]}, giving way": sliced,
        }
        first = 10 * args.points
        for round_ in range(1, args.rounds + 1):
            for label, (size, priority) in slices.items():
                edge_store.WRITE_SLICE, edge_store.READ_PRIORITY_S = size, priority
                times = during_writes(store, rng, first)
                first += 10 * args.points
                p50, p95 = np.percentile(times, [50, 95])
                print(f"round {round_}, {label}: p50 {p50:.1f} / p95 {p95:.1f} ms")
        store.close()


if __name__ == "__main__":
    main()
