"""How fast `medindex` answers before any real work: `--help`, and refusals that need no
broker, store or model (an unknown `--format`, an empty query image). Timed, not asserted.

    .venv/bin/python docs/startup.py [--rounds 10]   # make bench-startup

Each round runs every command once, in turn, so that all of them share the machine's load of
that moment; a bare interpreter (`python -c pass`) is timed beside them as the unit the others
are compared with. Prints each command's median and 90th percentile wall time, its ratio to the
interpreter's, its exit code and the machine (cores, load average, date).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commands(scratch: Path) -> dict[str, list[str]]:
    medindex = [sys.executable, "-m", "pipeline.cli"]
    empty = scratch / "empty.png"
    empty.write_bytes(b"")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "medindex --help": [*medindex, "--help"],
        "medindex ingest --format jpeg (refused)": [
            *medindex, "ingest", "--dataset", str(scratch), "--format", "jpeg",
        ],
        "medindex search --image empty.png (refused)": [
            *medindex, "search", "--collection", "x", "--image", str(empty),
        ],
    }  # fmt: skip


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, check=False)
    return time.perf_counter() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDINDEX_")}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as scratch:
        runs = commands(Path(scratch))
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        codes: dict[str, set[int]] = {name: set() for name in runs}
        for _ in range(args.rounds):
            for name, argv in runs.items():
                took, code = timed(argv, env)
                seconds[name].append(took)
                codes[name].add(code)
    unit = statistics.median(seconds["python -c pass"])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} cores; load {load}; "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"{'command':46} {'median':>8} {'p90':>8} {'x python':>9}  exit")
    for name, taken in seconds.items():
        ordered = sorted(taken)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        median = statistics.median(taken)
        exits = ",".join(map(str, sorted(codes[name])))
        print(f"{name:46} {median:7.2f}s {p90:7.2f}s {median / unit:8.1f}x  {exits}")


if __name__ == "__main__":
    main()
