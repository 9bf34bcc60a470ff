"""The embedded store's memory, float32 vectors in RAM against int8 with the originals on disk
(issue 23, item 3), side by side over the same points. Figures in BENCHMARKS.md.

    PYTHONPATH=$PWD .venv/bin/python docs/store_memory.py --points 100000 [--json]

bench-scale's generated table (ChestX-ray14's fields) and its trivial vectors, written in this
process into two embedded collections (`producers.scale.embedded_copy`: 1,000-point calls,
then the HNSW index built), one per layout. Each is then opened by a fresh process that runs
bench-scale's filtered search (20 to warm up, 200 timed, 50 for recall@10 against exact
search) and reports what it holds: resident memory (`VmRSS`, its anonymous and file-backed
parts: the on-disk originals are mapped files, counted as they are touched) and its peak
(`VmHWM`), and the store's part (`VmRSS` less what the process held before opening it); and
each collection's size on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUTS = {"float32": ("none", False), "int8": ("int8", True)}
STATUS_FIELDS = {"VmRSS": "rss_mib", "RssAnon": "anon_mib", "RssFile": "file_mib",
                 "VmHWM": "peak_rss_mib"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--open", nargs=2, metavar=("ROOT", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open:
        print(json.dumps(searched(Path(args.open[0]), args.open[1])))
        return
    figures = measure(args.points)
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))


def measure(points: int) -> dict:
    from producers.scale import embedded_copy, write_table

    work = Path(tempfile.mkdtemp(prefix="store-memory-"))
    table = write_table(work / "data", points)
    figures: dict = {"points": points}
    for name, (quantization, on_disk) in LAYOUTS.items():
        started = time.perf_counter()
        embedded_copy(work / name, table, quantization, on_disk).close()
        built_s = round(time.perf_counter() - started, 1)
        opened = subprocess.run(
            [sys.executable, __file__, "--open", str(work / name), name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        disk = sum(f.stat().st_size for f in (work / name).rglob("*") if f.is_file())
        figures[name] = json.loads(opened.stdout) | {
            "write_and_build_s": built_s,
            "disk_mib": round(disk / 2**20),
        }
    shutil.rmtree(work)
    return figures


def searched(root: Path, name: str) -> dict:
    """This process opens the collection, searches it as bench-scale does, and says what it
    holds."""
    from pipeline.store import SearchRequest
    from pipeline.store.edge import EdgeStore
    from producers.scale import COLLECTION, FILTER, exact_answers, store_recall

    quantization, on_disk = LAYOUTS[name]
    before = _status()  # the interpreter and the libraries, no store yet
    store = EdgeStore(root, quantization, on_disk=on_disk)
    rng = np.random.default_rng(11)
    times = []
    for i in range(220):
        request = SearchRequest(vector=rng.normal(size=384).tolist(), filter=FILTER, limit=10)
        started = time.perf_counter()
        store.search(COLLECTION, request)
        if i >= 20:
            times.append(1000 * (time.perf_counter() - started))
    recall = store_recall(store, *exact_answers(root.parent / "data" / "Data_Entry_scale.csv"))
    p50, p95 = np.percentile(times, [50, 95])
    held = _status()
    store.close()
    return held | {
        "store_rss_mib": held["rss_mib"] - before["rss_mib"],
        "search_p50_ms": round(float(p50), 2),
        "search_p95_ms": round(float(p95), 2),
        "recall_at_10": recall,
    }


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        field, _, value = line.partition(":")
        if field in STATUS_FIELDS:
            out[STATUS_FIELDS[field]] = round(int(value.split()[0]) / 1024)
    return out


if __name__ == "__main__":
    main()
