"""`medindex bench`'s (d), the orchestration ceiling, alone and in several runs: issue 23's
"(d) >= 2,000 images/s in each of three runs" without the bench's hour of (a)-(c) and searches
around each. Figures in BENCHMARKS.md.

    PYTHONPATH=$PWD .venv/bin/python docs/orchestration.py [--runs 3] [--n 320] [--copies 40]
        [--embed-workers 2] [--home DIR]

Each run as the bench takes (d): a fresh `medindex up` with the trivial embedder (no decoding,
no model) and a fresh store, 32 warm-up images, then `--copies` copies of the bench's `--n`
generated JPEGs as concurrent jobs, timed from the first enqueue to the last point written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.celery_app import app
from pipeline.model_info import TRIVIAL_MODEL
from pipeline.samples import write_sample_dataset
from pipeline.settings import get_settings
from producers.bench import Stack
from producers.harness import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=320)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--embed-workers", type=int, default=None, help="default: the settings'")
    parser.add_argument("--home", type=Path, help="keep the data and the last stack's log here")
    args = parser.parse_args()
    update = {"local_redis_port": free_port(), "redis_url": None}
    settings = get_settings().model_copy(update=update)
    app.conf.broker_url = settings.broker_url
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        data, warmup = home / "sample", home / "warmup"
        write_sample_dataset(data, args.n, seed=1)  # the bench's images
        write_sample_dataset(warmup, 32, seed=2)
        for run in range(1, args.runs + 1):
            shutil.rmtree(home / "stack", ignore_errors=True)
            workers = args.embed_workers or settings.embed_concurrency
            stack = Stack(settings, home / "stack", TRIVIAL_MODEL, workers, settings.preprocessing,
                          "cpu")  # fmt: skip
            with stack as running:
                running.ingest(warmup)
                d = running.ingest(data, copies=args.copies)
            figures = {"run": run, "images": d.images, "seconds": round(d.seconds, 2),
                       "d_orchestration": round(d.rate)}  # fmt: skip
            print(json.dumps(figures | {"load_average": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
