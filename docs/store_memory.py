"""The embedded store's memory, float32 vectors in RAM against int8 with the originals on disk
(issue 23, item 3), side by side over the same points. Figures in BENCHMARKS.md.

    PYTHONPATH=$PWD .venv/bin/python docs/store_memory.py --points 100000 [--json]

bench-scale's generated table (ChestX-ray14's fields) and its trivial vectors, written in this
process into two embedded collections (`producers.scale.embedded_copy`: 1,000-point calls,
then the HNSW index built), one per layout. Each is then opened by a fresh process that searches
it and reports what it holds (`producers.scale.footprint`), and each collection's size on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from producers.scale import LAYOUTS, embedded_copy, measured_apart, write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.points)
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))


def measure(points: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="store-memory-"))
    table = write_table(work / "data", points)
    figures: dict = {"points": points}
    for name, (quantization, on_disk) in LAYOUTS.items():
        started = time.perf_counter()
        embedded_copy(work / name, table, quantization, on_disk).close()
        built_s = round(time.perf_counter() - started, 1)
        disk = sum(f.stat().st_size for f in (work / name).rglob("*") if f.is_file())
        figures[name] = measured_apart(work / name, name, table) | {
            "write_and_build_s": built_s,
            "disk_mib": round(disk / 2**20),
        }
    shutil.rmtree(work)
    return figures


if __name__ == "__main__":
    main()
