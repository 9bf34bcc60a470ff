"""`medindex bench-scale`: the scale curve of one collection, measured to N points.

The real stack (`medindex up` in a home of its own: Redis, an embed worker, the store worker)
with the trivial embedder (no decoding, no model: each row's vector is made from its key,
`pipeline.model_info.trivial_vectors`, so that the exact answers are known here) ingests a
generated table shaped like ChestX-ray14's `Data_Entry_2017.csv` (findings lists, patient ids,
ages, views) through the real producer, in one job. Every `STEP` points it prints a line: the
write rate of that step, the store process' RSS, the store's disk, Redis' used memory, and the
filtered searches taken meanwhile (the store worker builds the index past every
`MEDINDEX_INDEX_AFTER_POINTS` points, in the background). Then: the rest indexed (`start_index`,
as an ingest's end asks; `indexed`: no point left outside the index, the collection served
throughout), searches on the indexed collection and their recall@10 against exact search,
and the same points in an int8 collection (built in this process). Once the stack has
stopped, a fresh process opens each collection, searches it and says what it holds
(`footprint`: what a restarted store worker would start from), the int8 one's recall taken
there. The last line is one JSON object (`KEYS`).

    python -m producers.scale ROOT LAYOUT TABLE   # a footprint, in a process of its own
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from pipeline.celery_app import app
from pipeline.model_info import TRIVIAL_MODEL, trivial_vectors
from pipeline.progress import JobTracker, connect_redis
from pipeline.schemas import point_id
from pipeline.settings import Settings
from pipeline.store import SearchRequest, finish_bulk, open_store
from pipeline.store.edge import EdgeStore
from producers.harness import RunningStack, free_port, start_stack
from producers.ingest import IngestRequest, feed, start_ingest
from producers.spec import SourceSpec
from search_api.client import Query, SearchClient

STEP = 100_000
COLLECTION = "scale"
# A keyword and a range condition: women of 40 to 59, about 15 % of the table.
FILTER = {
    "must": [
        {"key": "patient_gender", "match": {"value": "F"}},
        {"key": "patient_age", "range": {"gte": 40, "lt": 60}},
    ]
}
FINDINGS = ("No Finding", "Infiltration", "Effusion", "Atelectasis", "Nodule", "Mass",
            "Pneumothorax", "Consolidation", "Pleural_Thickening", "Cardiomegaly")  # fmt: skip
KEYS = (
    "points", "ingest_images_per_s", "slowest_100k_images_per_s", "store_rss_mib", "disk_mib",
    "redis_peak_mib", "producer_rss_mib", "index_build_s", "indexed", "search_idle_p50_ms",
    "search_idle_p95_ms", "search_ingest_p50_ms", "search_ingest_p95_ms", "recall_at_10",
    "recall_at_10_int8", "store_anon_mib", "store_reopened_mib", "store_int8_mib",
)  # fmt: skip
RECALL_QUERIES = 50
LAYOUTS = {"float32": ("none", False), "int8": ("int8", True)}
STATUS_FIELDS = {"VmRSS": "rss_mib", "RssAnon": "anon_mib", "RssFile": "file_mib",
                 "VmHWM": "peak_rss_mib"}  # fmt: skip


def write_table(folder: Path, n: int, seed: int = 23) -> Path:
    """`n` rows like ChestX-ray14's table, every one naming the same small image (the trivial
    embedder reads no pixels); keyed by `Image Index`."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(folder / "x.png")
    rng = np.random.default_rng(seed)
    ages = rng.integers(1, 95, n)
    genders = rng.choice(["M", "F"], n)
    views = rng.choice(["PA", "AP"], n, p=[0.6, 0.4])
    patients = rng.integers(1, max(2, n // 4), n)
    counts = rng.choice([1, 1, 1, 2, 3], n)
    table = folder / "Data_Entry_scale.csv"
    with table.open("w", newline="") as out:
        writer = csv.writer(out)
        header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                  "Patient Gender", "View Position", "Path"]  # fmt: skip
        writer.writerow(header)
        for i in range(n):
            labels = "|".join(rng.choice(FINDINGS, counts[i], replace=False))
            writer.writerow([f"{i:08d}_000.png", labels, i % 7, patients[i], ages[i],
                             genders[i], views[i], "x.png"])  # fmt: skip
    return table


def run_scale(settings: Settings, points: int, say: Callable[[str], None]) -> dict:
    home = settings.home.resolve() / "bench-scale"
    port = free_port()
    update = {"home": home, "model": TRIVIAL_MODEL, "redis_url": None, "flower_port": 0,
              "local_redis_port": port}  # fmt: skip
    settings = settings.model_copy(update=update)
    app.conf.broker_url = settings.broker_url
    env = dict(os.environ, MEDINDEX_HOME=str(home), MEDINDEX_MODEL=TRIVIAL_MODEL,
               MEDINDEX_FLOWER_PORT="0", MEDINDEX_LOCAL_REDIS_PORT=str(port))  # fmt: skip
    env.pop("MEDINDEX_REDIS_URL", None)
    shutil.rmtree(home / "qdrant", ignore_errors=True)  # the bench's own scratch store
    table = write_table(home / "data", points)
    say(f"bench-scale: {points:,} rows in {table}")
    stack = start_stack(env, home / "up.log")
    try:
        figures = _ingest_and_search(stack, settings, table, points, say)
    finally:
        stack.stop(timeout_s=120)
    reopened = measured_apart(settings.embedded_store_path, "float32", table)
    int8 = _int8_footprint(home / "int8", table)
    return figures | {
        "recall_at_10_int8": int8["recall_at_10"],
        "store_reopened_mib": reopened["store_rss_mib"],
        "store_int8_mib": int8["store_rss_mib"],
        "footprints": {"float32": reopened, "int8": int8},
    }


def _ingest_and_search(
    stack: RunningStack, settings: Settings, table: Path, points: int, say: Callable[[str], None]
) -> dict:
    client = SearchClient(settings)
    redis = connect_redis(settings.broker_url)
    tracker = JobTracker(redis)
    producer = psutil.Process()
    spec = SourceSpec(dataset=str(table), options=settings.read_options(key_column="Image Index"))
    peaks = {"store": 0, "store_anon": 0, "redis": 0, "producer": 0}
    latencies: list[float] = []
    searching = threading.Event()
    searcher = threading.Thread(target=_search_while, args=(client, searching, latencies))

    started = time.perf_counter()
    job_id, _, _ = start_ingest(IngestRequest(spec, COLLECTION), settings)
    searching.set()
    searcher.start()
    steps, last_t, last_n, next_step = [], started, 0, min(STEP, points)
    while True:
        feed(tracker, job_id, settings)
        progress = tracker.progress(job_id)
        rss, anon = _store_memory(stack)
        peaks["store"] = max(peaks["store"], rss)
        peaks["store_anon"] = max(peaks["store_anon"], anon)
        peaks["redis"] = max(peaks["redis"], int(redis.info("memory")["used_memory"]))
        peaks["producer"] = max(peaks["producer"], producer.memory_info().rss)
        if progress.done >= next_step:
            now, done = time.perf_counter(), progress.done
            step = _step_line(done, (done - last_n) / (now - last_t), stack, settings, latencies)
            steps.append(step)
            say(json.dumps({"progress": step}))
            last_t, last_n = now, done
            next_step = min(next_step + STEP, points) if done < points else points + 1
        if progress.finished:
            break
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    searching.clear()
    searcher.join()
    ingest_p50, ingest_p95 = _percentiles(latencies)
    idle_p50, idle_p95 = _percentiles(_searches(client, 200))

    store = open_store(settings)
    built = time.perf_counter()
    finish_bulk(store, COLLECTION, timeout_s=3 * 3600)
    index_build_s = time.perf_counter() - built
    unindexed = store.collection_info(COLLECTION)["unindexed_points"]
    indexed_p50, indexed_p95 = _percentiles(_searches(client, 200))
    queries, exact = exact_answers(table)
    hits = [
        client.search(COLLECTION, Query(vector=q.tolist(), filter=FILTER, limit=10))
        for q in queries
    ]
    recall = recall_at_10([[h["payload"]["image_index"] for h in found] for found in hits], exact)
    return {
        "points": progress.indexed,
        "failed": progress.failed,
        "ingest_images_per_s": round(progress.done / seconds, 1),
        "slowest_100k_images_per_s": round(min(s["images_per_s"] for s in steps), 1),
        "first_100k_images_per_s": round(steps[0]["images_per_s"], 1),
        "store_rss_mib": round(peaks["store"] / 2**20),
        "store_anon_mib": round(peaks["store_anon"] / 2**20),
        "disk_mib": round(_disk(settings.embedded_store_path) / 2**20),
        "redis_peak_mib": round(peaks["redis"] / 2**20, 1),
        "producer_rss_mib": round(peaks["producer"] / 2**20),
        "index_build_s": round(index_build_s, 1),
        "indexed": unindexed == 0,
        "search_idle_p50_ms": idle_p50,
        "search_idle_p95_ms": idle_p95,
        "search_ingest_p50_ms": ingest_p50,
        "search_ingest_p95_ms": ingest_p95,
        "search_indexed_p50_ms": indexed_p50,
        "search_indexed_p95_ms": indexed_p95,
        "recall_at_10": recall,
        "steps": steps,
    }


def _step_line(
    done: int, rate: float, stack: RunningStack, settings: Settings, latencies: list[float]
) -> dict:
    recent = latencies[-200:]
    p50, p95 = _percentiles(recent) if recent else (None, None)
    rss, anon = _store_memory(stack)
    return {
        "points": done,
        "images_per_s": round(rate, 1),
        "store_rss_mib": round(rss / 2**20),
        "store_anon_mib": round(anon / 2**20),
        "disk_mib": round(_disk(settings.embedded_store_path) / 2**20),
        "redis_used_mib": round(
            int(connect_redis(settings.broker_url).info("memory")["used_memory"]) / 2**20, 1
        ),
        "search_p50_ms": p50,
        "search_p95_ms": p95,
    }


def _search_while(client: SearchClient, going: threading.Event, out: list[float]) -> None:
    """Filtered searches, one every 0.1 s, while the ingest writes."""
    rng = np.random.default_rng(7)
    while going.is_set():
        started = time.perf_counter()
        client.search(COLLECTION, Query(vector=rng.normal(size=384).tolist(), filter=FILTER))
        out.append(1000 * (time.perf_counter() - started))
        time.sleep(0.1)


def _searches(client: SearchClient, n: int) -> list[float]:
    rng = np.random.default_rng(11)
    times = []
    for _ in range(n):
        vector = rng.normal(size=384).tolist()
        started = time.perf_counter()
        client.search(COLLECTION, Query(vector=vector, filter=FILTER, limit=10))
        times.append(1000 * (time.perf_counter() - started))
    return times


def _percentiles(times: list[float]) -> tuple[float | None, float | None]:
    if not times:
        return None, None
    p50, p95 = np.percentile(times, [50, 95])
    return round(float(p50), 2), round(float(p95), 2)


def exact_answers(table: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Random queries near the data, and the exact top 10 under the filter, by brute force
    over the vectors the trivial embedder made (remade here from the keys)."""
    keys, matching = [], []
    with table.open() as rows:
        for row in csv.DictReader(rows):
            age, gender = int(row["Patient Age"]), row["Patient Gender"]
            if gender == "F" and 40 <= age < 60:
                keys.append(row["Image Index"])
    vectors = trivial_vectors(keys)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = np.random.default_rng(13)
    queries = trivial_vectors([f"query-{i}" for i in range(RECALL_QUERIES)])
    queries += rng.normal(scale=0.1, size=queries.shape).astype(np.float32)
    for q in queries:
        scores = vectors @ (q / np.linalg.norm(q))
        matching.append([keys[i] for i in np.argsort(-scores)[:10]])
    return queries, matching


def recall_at_10(found: list[list[str]], exact: list[list[str]]) -> float:
    shares = [len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]
    return round(float(np.mean(shares)), 4)


def _int8_footprint(root: Path, table: Path) -> dict:
    """The same points in an int8 collection (originals on disk), written and indexed in this
    process, then opened by a fresh one: its memory, and the recall@10 of its rescored
    searches against exact search."""
    embedded_copy(root, table, "int8", on_disk=True).close()
    try:
        return measured_apart(root, "int8", table)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def store_recall(
    store: EdgeStore, queries: np.ndarray, exact: list[list[str]], hnsw_ef: int | None = None
) -> float:
    """recall@10 of an embedded collection's filtered searches against the exact answers
    (with HNSW's beam `hnsw_ef`, or the store's)."""
    found = [
        [h["payload"]["image_index"] for h in store.search(COLLECTION, SearchRequest(
            vector=q.tolist(), filter=FILTER, limit=10, hnsw_ef=hnsw_ef))]
        for q in queries
    ]  # fmt: skip
    return recall_at_10(found, exact)


def embedded_copy(root: Path, table: Path, quantization: str, on_disk: bool) -> EdgeStore:
    """The table's points written in this process into a new embedded collection of the given
    layout, in 1,000-point calls, and indexed (as a reindex leaves it)."""
    shutil.rmtree(root, ignore_errors=True)
    store = EdgeStore(root, quantization, on_disk=on_disk)
    spec = {"dim": 384, "payload_indexes": {"patient_gender": "keyword", "patient_age": "integer"}}
    store.ensure_collection(COLLECTION, spec, bulk=True)
    with table.open() as rows:
        batch: list[dict] = []
        for row in csv.DictReader(rows):
            batch.append(row)
            if len(batch) == 1000:
                _write(store, batch)
                batch = []
        if batch:
            _write(store, batch)
    finish_bulk(store, COLLECTION, timeout_s=3 * 3600)
    return store


def _write(store: EdgeStore, rows: list[dict]) -> None:
    keys = [row["Image Index"] for row in rows]
    payloads = [
        {"image_index": row["Image Index"], "patient_gender": row["Patient Gender"],
         "patient_age": int(row["Patient Age"])}
        for row in rows
    ]  # fmt: skip
    ids = [point_id("int8", "train", key) for key in keys]
    store.upsert(COLLECTION, ids, trivial_vectors(keys), payloads)


def _store_memory(stack: RunningStack) -> tuple[int, int]:
    """Resident and anonymous bytes of the store worker's processes (the one serving writes and
    store calls, its children); the rest of resident is mapped files (Edge's segments)."""
    rss = anon = 0
    for process in psutil.Process(stack.process.pid).children(recursive=True):
        try:
            if "upsert" in " ".join(process.cmdline()):
                memory = process.memory_info()
                rss, anon = rss + memory.rss, anon + memory.rss - memory.shared
        except psutil.Error:
            continue
    return rss, anon


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measured_apart(root: Path, layout: str, table: Path) -> dict:
    """`footprint` taken by a fresh process (this module run as a script)."""
    opened = subprocess.run(
        [sys.executable, "-m", "producers.scale", str(root), layout, str(table)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(opened.stdout)


def footprint(root: Path, layout: str, table: Path) -> dict:
    """This process opens the collection at `root` (written from `table`), runs the filtered
    search (20 to warm up, 200 timed, 50 for recall@10 against exact search) and reads its
    own `/proc/self/status`: resident memory, its anonymous and file-backed parts (Edge maps
    its segments: their pages count as they are touched), its peak, and the store's part
    (resident less what the process held before opening it: the interpreter, numpy, the Edge
    binding). A fresh process is what a restarted store worker starts from: it holds the
    collection, not what writing it left behind."""
    quantization, on_disk = LAYOUTS[layout]
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
    recall = store_recall(store, *exact_answers(table))
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
    root, layout, table = sys.argv[1:4]
    print(json.dumps(footprint(Path(root), layout, Path(table))))
