"""What the embed step can reach on a CPU whose cores the forward pass already fills: the
forward pass alone in one process (the bench's (b)) against one single-thread process per core,
with and without the embed step's reading and decoding. `make bench-cpu`; BENCHMARKS.md.

    .venv/bin/python docs/cpu_ceiling.py [--rounds 3] [--seconds 12] [--json]

Each round measures, side by side in time (one after the other, the same minute):
  (b)      one process, one thread per core: the forward pass on ready pixels, jobs of 16;
  (fwd)    one process per core, one thread each: the same forward pass (the pipeline's
           layout of embed processes, with nothing else: no decoding, no Celery, no Redis);
  (embed)  one process per core, one thread each: the embed step itself (`embed_jobs`: rows
           read, JPEGs decoded and resized on its decoding threads, the forward pass), on the
           bench's generated 600x450 JPEGs, two jobs a call as the workers take them.
The processes of one measurement start together at a barrier and run for the same time.
fwd/b says whether separate processes use the cores better than threads; embed/b is the most
the pipeline's (c) can reach against (b) on this machine. Model: a locally saved ViT of
dino-vits16's shape with random weights (its cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

JOB = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeline.random_models import build_random_vit
    from pipeline.samples import write_sample_dataset

    home = Path(tempfile.mkdtemp(prefix="medindex-cpu-ceiling-"))
    model = str(build_random_vit(home / "vit"))
    data = str(write_sample_dataset(home / "sample", args.images, seed=1))
    cores = os.cpu_count() or 1
    rounds = []
    for number in range(1, args.rounds + 1):
        figures = {
            "b": measure("forward", 1, cores, model, data, args.seconds),
            "fwd": measure("forward", cores, 1, model, data, args.seconds),
            "embed": measure("embed", cores, 1, model, data, args.seconds),
        }
        figures |= {"fwd_over_b": figures["fwd"] / figures["b"]}
        figures |= {"embed_over_b": figures["embed"] / figures["b"]}
        rounds.append(figures)
        if not args.json:
            print(
                f"round {number}: (b) {figures['b']:.1f}  (fwd) {figures['fwd']:.1f}  "
                f"(embed) {figures['embed']:.1f} images/s   fwd/b {figures['fwd_over_b']:.3f}"
                f"   embed/b {figures['embed_over_b']:.3f}",
                flush=True,
            )
    summary = {
        ratio: {
            "min": round(min(r[ratio] for r in rounds), 3),
            "median": round(statistics.median(r[ratio] for r in rounds), 3),
            "max": round(max(r[ratio] for r in rounds), 3),
        }
        for ratio in ("fwd_over_b", "embed_over_b")
    }
    if args.json:
        print(json.dumps({"cores": cores, "rounds": rounds, "summary": summary}))
    else:
        for ratio, spread in summary.items():
            print(f"{ratio}: min {spread['min']}  median {spread['median']}  max {spread['max']}")
    return 0


def measure(
    what: str, processes: int, threads: int, model: str, data: str, seconds: float
) -> float:
    """Images/s of `processes` processes of `threads` threads each, started together."""
    context = multiprocessing.get_context("spawn")  # no torch state shared with this process
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(
            target=_run,
            args=(what, part, processes, threads, model, data, seconds, barrier, results),
        )
        for part in range(processes)
    ]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def _run(
    what: str,
    part: int,
    parts: int,
    threads: int,
    model: str,
    data: str,
    seconds: float,
    barrier: object,
    results: object,
) -> None:
    import torch

    from pipeline.embed import embed_jobs
    from pipeline.embedder import Kernels, get_embedder
    from pipeline.schemas import EmbedJob
    from pipeline.settings import get_settings
    from pipeline.sources import open_source, resolve

    torch.set_num_threads(threads)
    settings = get_settings().model_copy(update={"preprocessing": "fast"})
    decoder = ThreadPoolExecutor(settings.embed_decode_threads, "decode")
    embedder = get_embedder(model, "cpu", "mean", "fast", Kernels("float32"))
    ref = resolve(data)
    starts = range(part * JOB, len(open_source(ref)) - JOB + 1, parts * JOB)  # this process'
    jobs = [
        EmbedJob(job_id="ceiling", collection="-", source=ref, model=model,
                 rows=list(range(start, start + JOB)))
        for start in starts
    ]  # fmt: skip
    pixels = torch.randn(JOB, 3, 224, 224)
    embedder.vectors(pixels)  # warm up
    list(embed_jobs(jobs[:2], embedder, settings, JOB, decoder))
    barrier.wait()
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        if what == "forward":
            embedder.vectors(pixels)
            images += JOB
            continue
        for call in range(0, len(jobs), 2):  # two jobs a call, as the CPU workers take them
            done = embed_jobs(jobs[call : call + 2], embedder, settings, JOB, decoder)
            images += sum(len(result.batch) for _, result in done)
            if time.perf_counter() - started >= seconds:
                break
    results.put(images / (time.perf_counter() - started))


if __name__ == "__main__":
    raise SystemExit(main())
