"""The audit at scale: time, memory and store load of `medindex audit` over N points, and the
searches served meanwhile. Figures in BENCHMARKS.md.

    .venv/bin/python docs/audit_scale.py --points 10000 20000 [--index] [--json]
    .venv/bin/python docs/audit_scale.py --home /tmp/audit-scale-XXXX [--json]

Per size, a fresh `medindex up` (Redis, an embed worker, the store worker owning the embedded
Qdrant Edge engine); N points written through the upsert queue as the embed step sends them:
384-d vectors in clusters, fingerprints as ingest makes them (random pHashes, 2 % of points
planted as near copies of another), a patient and a split each; `--index`: then the HNSW
index built (`finish_bulk`, as a reindex leaves a collection; without it Edge searches every
point, as it does an ingested collection today). Then `medindex audit`, timed,
while a client runs one search after another; the same searches before it give the baseline.
`--home`: the collection an earlier run left in its folder (written, and indexed with
`--index`), audited again on a fresh stack, its write and build not repeated. With `--beams
200 100 ...`: instead of whole audits, one audit per beam in turn (`medindex audit --beam`),
each cancelled after `--window` seconds, and the shards it answered in them counted (side by
side on one warm store: the ratio of their rates is what the beam buys).
Memory: the audit process' peak RSS, the store worker's and the embed worker's peak RSS
sampled during the audit, Redis' peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

DIM = 384
BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000])
    parser.add_argument("--index", action="store_true", help="build the HNSW index first")
    parser.add_argument("--home", type=Path, help="audit the collection an earlier run left")
    parser.add_argument("--beams", type=int, nargs="+", help="with --home: audits' rates by beam")
    parser.add_argument("--window", type=float, default=120.0, help="seconds per --beams audit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.beams:
        results = compare_beams(args.home, args.beams, args.window)
    elif args.home:
        results = [measure(0, home=args.home)]
    else:
        results = [measure(n, args.index) for n in args.points]
    print(json.dumps(results, indent=1) if args.json else "\n".join(map(str, results)))


def measure(n: int, index: bool = False, home: Path | None = None) -> dict:
    again = home is not None
    home = home or Path(tempfile.mkdtemp(prefix="audit-scale-"))
    from producers.harness import running_stack

    with running_stack(_environment(home), home / "up.log") as stack:
        written, indexed = (None, None) if again else (_write(n), _index() if index else None)
        n = n or _count()
        search = _searcher()
        before = _latencies(search, 50)
        during: list[float] = []
        stop = threading.Event()
        loop = threading.Thread(target=_search_loop, args=(search, during, stop))
        peaks = {"store_worker_rss_mb": 0.0, "embed_worker_rss_mb": 0.0}
        sampler = threading.Thread(target=_sample, args=(stack.process.pid, peaks, stop))
        loop.start()
        sampler.start()
        started = time.monotonic()
        audit = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "audit", "--collection", "scale", "--json"],
            env=dict(os.environ), capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        # Only the audit has ended among this process' children: the stack still runs.
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stop.set()
        loop.join()
        sampler.join()
        if audit.returncode:
            raise SystemExit(audit.stderr[-2000:])
        summary = json.loads(audit.stdout.strip().splitlines()[-1])
        redis_peak = _redis_peak_mb()
    return {
        "points": n,
        "write_s": written and round(written, 1),
        "index_s": indexed,
        "audit_s": round(seconds, 1),
        "points_per_s": round(n / seconds, 1),
        "audit_process_peak_rss_mb": round(child, 1),
        **{k: round(v, 1) for k, v in peaks.items()},
        "redis_peak_mb": redis_peak,
        "search_ms_before": _percentiles(before),
        "search_ms_during": _percentiles(during),
        "searches_during": len(during),
        "pairs": summary["counts"]["pairs"],
        "clusters": summary["counts"]["duplicate_clusters"],
        "load_average": os.getloadavg(),
    }


def _write(n: int) -> float:
    """N points through the upsert queue; seconds until the store counts them all."""
    from pipeline.celery_app import senders
    from pipeline.fingerprint import INDEXES, bands
    from pipeline.schemas import EmbedJob, PointBatch, SourceRef, point_id
    from pipeline.settings import get_settings
    from pipeline.store import open_store

    store = open_store(get_settings())
    store.ensure_collection(
        "scale", {"dim": DIM, "payload_indexes": INDEXES | {"patient": "keyword"}}
    )
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(1, n // 50), DIM)).astype(np.float32)
    phashes = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * 2
    copies = rng.choice(n, size=n // 50, replace=False)
    phashes[copies] = phashes[(copies + 1) % n] ^ 1  # a near copy of its neighbour: 1 bit apart
    ref = SourceRef(dataset="scale", name="scale")
    started = time.monotonic()
    with senders.connection() as producer:
        for start in range(0, n, BATCH):
            rows = list(range(start, min(n, start + BATCH)))
            vectors = centres[rng.integers(0, len(centres), len(rows))] + rng.normal(
                scale=0.3, size=(len(rows), DIM)
            ).astype(np.float32)
            payloads = [
                {
                    "source": {"key": f"img-{r}", "split": "test" if r % 10 == 0 else "train"},
                    "patient": f"p{r // 4}",
                    "fp_pixels": f"{r:032x}",
                    "fp_phash": f"{int(phashes[r]):016x}",
                    "fp_phash256": f"{int(phashes[r]):016x}" * 4,
                    "fp_bands": bands(int(phashes[r])),
                }
                for r in rows
            ]
            job = EmbedJob(job_id="scale", collection="scale", source=ref, model="m", rows=rows)
            ids = [point_id("scale", "train", f"img-{r}") for r in rows]
            senders.send_points(
                PointBatch.build(job, ids, rows, payloads, vectors), True, producer=producer
            )
    while store.count("scale") < n:
        time.sleep(0.5)
    return time.monotonic() - started


def compare_beams(home: Path, beams: list[int], window: float) -> list[dict]:
    """Per beam in turn, on one stack: an audit started, the shards it answers in `window`
    seconds (after its first 10 s) counted from its results in Redis, then cancelled and its
    queued shards drained before the next."""
    from pipeline.progress import connect_redis
    from pipeline.settings import get_settings
    from producers.harness import running_stack

    results = []
    with running_stack(_environment(home), home / "up.log"):
        redis = connect_redis(get_settings().broker_url)
        for beam in beams:
            known = set(redis.scan_iter("medindex:audit:*:shards"))
            audit = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "audit", "--collection", "scale",
                 "--beam", str(beam)],
                env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            while not (new := set(redis.scan_iter("medindex:audit:*:shards")) - known):
                time.sleep(0.5)
            key = new.pop()
            time.sleep(10)  # past the first shards, on a warm store
            first, started = redis.hlen(key), time.monotonic()
            time.sleep(window)
            answered, seconds = redis.hlen(key) - first, time.monotonic() - started
            audit.kill()
            job = key.split(":")[2]
            subprocess.run([sys.executable, "-m", "pipeline.cli", "cancel", job], check=True,
                           env=dict(os.environ), capture_output=True)  # fmt: skip
            while redis.llen("embed"):
                time.sleep(1)
            redis.delete(key)
            results.append({
                "beam": beam, "shards": answered, "seconds": round(seconds, 1),
                "points_per_s": round(answered * 64 / seconds, 1), "load_average": os.getloadavg(),
            })  # fmt: skip
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def _environment(home: Path) -> dict[str, str]:
    """The stack's settings for `home` (this process reads them too)."""
    from producers.harness import free_port

    os.environ.update(
        MEDINDEX_HOME=str(home), MEDINDEX_FLOWER_PORT="0", MEDINDEX_MODEL=str(home / "model"),
        MEDINDEX_LOCAL_REDIS_PORT=str(free_port()),
    )  # fmt: skip
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    return dict(os.environ)


def _count() -> int:
    from pipeline.settings import get_settings
    from pipeline.store import open_store

    return open_store(get_settings()).count("scale")


def _index() -> float:
    """Seconds to build the collection's HNSW index (the store worker's child builds it)."""
    from pipeline.settings import get_settings
    from pipeline.store import finish_bulk, open_store

    started = time.monotonic()
    finish_bulk(open_store(get_settings()), "scale")
    return round(time.monotonic() - started, 1)


def _searcher():
    from pipeline.settings import get_settings
    from search_api import Query, SearchClient

    client = SearchClient(get_settings())
    rng = np.random.default_rng(1)
    flt = {"must": [{"key": "source.split", "match": {"value": "train"}}]}

    def search() -> float:
        vector = rng.normal(size=DIM).tolist()
        started = time.perf_counter()
        client.search("scale", Query(vector=vector, limit=10, filter=flt, with_payload=False))
        return (time.perf_counter() - started) * 1000

    return search


def _latencies(search, count: int) -> list[float]:
    return [search() for _ in range(count)]


def _search_loop(search, out: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        out.append(search())
        time.sleep(0.05)


def _sample(root: int, peaks: dict, stop: threading.Event) -> None:
    """The workers' peak RSS: the store worker holds the engine; the embed worker's pool runs
    the shards."""
    while not stop.is_set():
        for proc in psutil.Process(root).children(recursive=True):
            try:
                line = " ".join(proc.cmdline())
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            key = "store_worker_rss_mb" if "store" in line else "embed_worker_rss_mb"
            if "worker" in line:
                peaks[key] = max(peaks[key], rss)
        time.sleep(0.5)


def _redis_peak_mb() -> float:
    from pipeline.progress import connect_redis
    from pipeline.settings import get_settings

    info = connect_redis(get_settings().broker_url).info("memory")
    return round(info["used_memory_peak"] / 2**20, 1)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1)}


if __name__ == "__main__":
    main()
