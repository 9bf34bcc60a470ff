"""`medindex bench`: the pipeline against the seed's loop and the hardware's ceiling.

One run, one process tree, the same generated 600x450 JPEGs and the same ViT-S/16:
  (a) the seed's loop: datasets.map(batched, 16) + ViTImageProcessor + ViTModel mean pooling,
      then upserts of 1,000 points, in one process;
  (b) the model ceiling: the bare forward pass on already-preprocessed tensors;
  (c) the pipeline end to end: producer -> Redis -> embed workers -> upsert worker -> Qdrant;
  (d) the orchestration ceiling: (c) with a trivial embedder (no decoding, no model);
and, for the fast preprocessing path, its parity with the exact one on the same images; the
embedded store's 1,000-point writes, Qdrant Edge against qdrant-client's local mode; and filtered
searches (the skin sample's filter, 384-d, skin-lesion payloads) in-process on Edge and
through `SearchClient` (the broker round trip included): idle, while an ingest writes, and
while the store builds another collection's index.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import psutil
import torch
from qdrant_client import QdrantClient, models
from transformers import AutoImageProcessor, ViTModel

from pipeline.celery_app import app, senders
from pipeline.embedder import Embedder, Kernels
from pipeline.errors import MedindexError
from pipeline.images import decode_rgb
from pipeline.model_info import TRIVIAL_MODEL
from pipeline.progress import JobTracker, connect_redis
from pipeline.quality import embedding_parity
from pipeline.random_models import build_random_vit
from pipeline.samples import sample_metadata, skin, write_sample_dataset
from pipeline.schemas import point_id
from pipeline.settings import PREPROCESSINGS, Settings
from pipeline.store import Admin, SearchRequest, Store, open_store
from pipeline.store.edge import EdgeStore
from pipeline.store.server import ServerStore
from producers.harness import free_port, start_stack
from producers.ingest import IngestRequest, feed, start_ingest
from producers.spec import SourceSpec
from search_api.client import Query, SearchClient

PROBE_QUEUE = "medindex-bench-probe"
SEARCH_FILTER = skin.BENCH_FILTER
DIM = 384
# Collections of skin-lesion payloads, indexed as the pipeline indexes the skin sample.
SEARCH_SPEC = {"dim": DIM, "payload_indexes": skin.payload_indexes()}


@dataclass
class StackRun:
    images: int
    seconds: float
    peak_rss: dict[str, int] = field(default_factory=dict)  # process name -> bytes

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def seed_loop(data: Path, model: str, store_path: Path, device: str) -> float:
    """(a) images/s of the notebook's code, embedding and upserting, in this process."""
    table = datasets.load_dataset(str(data), split="train")
    processor = AutoImageProcessor.from_pretrained(model)
    vit = ViTModel.from_pretrained(model).eval().to(device)

    def get_embeddings(batch: dict) -> dict:
        inputs = processor(images=batch["image"], return_tensors="pt").to(device)
        with torch.no_grad():
            batch["embeddings"] = vit(**inputs).last_hidden_state.mean(dim=1).cpu().numpy()
        return batch

    started = time.perf_counter()
    table = table.map(get_embeddings, batched=True, batch_size=16, load_from_cache_file=False)
    client = QdrantClient(path=str(store_path))
    vectors = models.VectorParams(size=384, distance=models.Distance.COSINE)
    client.create_collection("seed", vectors_config=vectors)
    # The notebook's payload: every column but the pixels, a missing value written as 0.
    payload = table.remove_columns(["image", "embeddings"])
    payload = payload.to_pandas().fillna(0).to_dict(orient="records")
    embeddings = np.array(table["embeddings"]).tolist()
    for i in range(0, len(embeddings), 1000):
        client.upsert("seed", points=models.Batch(
            ids=list(range(i, min(i + 1000, len(embeddings)))),
            vectors=embeddings[i : i + 1000], payloads=payload[i : i + 1000],
        ))  # fmt: skip
    seconds = time.perf_counter() - started
    client.close()
    return table.num_rows / seconds


def jpegs_of(data: Path, n: int) -> list[bytes]:
    table = datasets.load_dataset(str(data), split="train").select(range(n))
    return [i["bytes"] for i in table.cast_column("image", datasets.Image(decode=False))["image"]]


def model_ceiling(embedder: Embedder, jpegs: list[bytes], batch: int, seconds: float = 8) -> float:
    """(b) images/s of the forward pass alone on preprocessed batches of the pipeline's pass
    size, already on the device, in the pipeline's precision."""
    pictures = [decode_rgb(jpeg, 2**31, 2**31, embedder.draft_size) for jpeg in jpegs]
    pixels = embedder.pixels(pictures)
    pixels = pixels.repeat(-(-batch // len(pixels)), 1, 1, 1)[:batch]
    embedder.vectors(pixels)  # warm up (and compile, where asked)
    passes, started = 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - started < seconds:
        embedder.vectors(pixels)  # its vectors come back to the host: the pass has ended
        passes += 1
    return passes * batch / (time.perf_counter() - started)


def decode_ceiling(embedder: Embedder, jpegs: list[bytes], threads: int) -> float:
    """Images/s that `threads` threads decode and resize (the fast path, as the embed step's
    decoding threads do; no model): what the host's cores can feed the model."""

    def prepare(jpeg: bytes) -> np.ndarray:
        return embedder.prepare(decode_rgb(jpeg, 2**31, 2**31, embedder.draft_size))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(prepare, jpegs[: 4 * threads]))  # warm up
        started = time.perf_counter()
        list(pool.map(prepare, jpegs))
    return len(jpegs) / (time.perf_counter() - started)


def precision_parity(model: str, device: str, jpegs: list[bytes], half: str) -> dict:
    """Half precision's vectors (bf16 or fp16 autocast) against float32's, same images."""
    vectors = {}
    for precision in ("float32", half):
        embedder = Embedder(model, device, preprocessing="fast", kernels=Kernels(precision))
        pictures = [decode_rgb(jpeg, 2**31, 2**31, embedder.draft_size) for jpeg in jpegs]
        vectors[precision] = np.concatenate(
            [embedder.embed(pictures[i : i + 64]) for i in range(0, len(pictures), 64)]
        )
    return embedding_parity(vectors["float32"], vectors[half]) | {"precision": half}


class GpuSampler:
    """nvidia-smi's utilisation and memory of GPU 0, every 0.2 s while a run goes on."""

    def __init__(self) -> None:
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            line = nvidia_smi("utilization.gpu,memory.used")
            if line:
                utilisation, memory = (float(v) for v in line.split(",")[:2])
                self.utilisation.append(utilisation)
                self.memory_mib.append(memory)

    def figures(self) -> dict:
        if not self.utilisation:
            return {"gpu_utilisation_pct": None, "gpu_peak_memory_mib": None}
        return {
            "gpu_utilisation_pct": round(float(np.mean(self.utilisation)), 1),
            "gpu_peak_memory_mib": max(self.memory_mib),
        }


def nvidia_smi(fields: str) -> str | None:
    """GPU 0's `fields` as nvidia-smi prints them (csv, no units); None without one."""
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def bench_device(setting: str) -> str:
    """The device the bench runs on; a clear error when CUDA is asked for and absent."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise MedindexError("--device cuda: no CUDA device is visible to torch here")
    return setting


def describe_machine(device: str) -> str:
    host = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device == "cpu":
        return f"{host}, {torch.get_num_threads()} threads, device cpu"
    driver = nvidia_smi("driver_version") or "?"
    return f"{host}, device {torch.cuda.get_device_name(0)}, driver {driver}"


def preprocessing_parity(data: Path, model: str, settings: Settings, n: int = 128) -> dict:
    """The fast path against the exact one on the same JPEGs: vector parity, and the cost of
    decoding + preprocessing one image each way (no forward pass)."""
    jpegs = jpegs_of(data, n)
    limits = {"max_pixels": settings.max_image_pixels, "max_bytes": settings.max_image_bytes}
    vectors, prep_ms = {}, {}
    for path in PREPROCESSINGS:
        embedder = Embedder(model, "cpu", preprocessing=path)
        started = time.perf_counter()
        images = [decode_rgb(jpeg, **limits, draft_size=embedder.draft_size) for jpeg in jpegs]
        pixels = [embedder.pixels(images[i : i + 16]) for i in range(0, n, 16)]
        prep_ms[path] = 1000 * (time.perf_counter() - started) / n
        vectors[path] = embedder.embed(images)
        del pixels
    return embedding_parity(vectors["exact"], vectors["fast"]) | {
        "prep_ms_exact": round(prep_ms["exact"], 2),
        "prep_ms_fast": round(prep_ms["fast"], 2),
    }


def store_writes(rounds: int = 4, size: int = 1000, burst: int = 5) -> dict[str, float]:
    """Median points/s of `burst` consecutive 1,000-point writes (as the upsert task sends
    them) into the embedded engines: Qdrant Edge as configured (flushed every
    `MEDINDEX_STORE_FLUSH_S`), Edge flushing every write, and qdrant-client's local mode (the
    engine Edge replaced), alternating so that all see the same machine."""
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, Store] = {
            # No index build started by the writes (20,000 points): writes are what is timed.
            "edge": EdgeStore(Path(tmp) / "edge", index_after_points=10**9),
            "edge_flush_every_write": EdgeStore(
                Path(tmp) / "edge-flushed", index_after_points=10**9, flush_s=0
            ),
            "local_mode": ServerStore.local(Path(tmp) / "local"),
        }
        for store in stores.values():
            store.ensure_collection("bench", SEARCH_SPEC)
        rates: dict[str, list[float]] = {engine: [] for engine in stores}
        for n in range(rounds):
            calls = []
            for call in range(burst):
                ids = [point_id("bench", "train", f"{n}-{call}-{i}") for i in range(size)]
                payloads = sample_metadata(size, seed=n * burst + call)
                calls.append((ids, rng.random((size, DIM), dtype=np.float32), payloads))
            for engine, store in stores.items():
                started = time.perf_counter()
                for ids, vectors, payloads in calls:
                    store.upsert("bench", ids, vectors, payloads)
                rates[engine].append(size * burst / (time.perf_counter() - started))
        for store in stores.values():
            store.close()
    return {engine: float(np.median(r)) for engine, r in rates.items()}


def fill_search_collections(root: Path, sizes: list[int]) -> None:
    """Collections `search_<size>` of random 384-d points with skin-lesion payloads, written
    in 1,000-point calls as the pipeline writes them, no HNSW built (the threshold out of
    reach: as a collection between its builds), until the bench builds the largest one's."""
    store = EdgeStore(root, index_after_points=10**9)
    rng = np.random.default_rng(5)
    for size in sizes:
        name = f"search_{size}"
        store.ensure_collection(name, SEARCH_SPEC)
        payloads = sample_metadata(size, seed=size)
        for start in range(0, size, 1000):
            stop = min(start + 1000, size)
            ids = [point_id(name, "train", str(i)) for i in range(start, stop)]
            vectors = rng.normal(size=(stop - start, DIM)).astype(np.float32)
            store.upsert(name, ids, vectors, payloads[start:stop])
    store.close()


def in_process_searches(root: Path, names: list[str]) -> dict[str, dict]:
    """The filtered search's latency on Edge itself, no broker (the store worker stopped)."""
    store = EdgeStore(root)
    figures = {
        name: _latencies(
            lambda v, name=name: store.search(name, SearchRequest(vector=v, filter=SEARCH_FILTER))
        )
        for name in names
    }
    store.close()
    return figures


def _latencies(search: object, n: int = 200, until: threading.Event | None = None) -> dict:
    """p50/p95 in ms of `n` searches (or of searches until `until` is set), random queries."""
    rng = np.random.default_rng(7)
    for _ in range(5):  # warm up: the shard opened, its pages read
        search(rng.normal(size=DIM).tolist())
    times = []
    while (until is None and len(times) < n) or (until is not None and not until.is_set()):
        vector = rng.normal(size=DIM).tolist()
        started = time.perf_counter()
        search(vector)
        times.append(1000 * (time.perf_counter() - started))
    if not times:
        return {"p50_ms": None, "p95_ms": None, "searches": 0}
    p50, p95 = np.percentile(times, [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "searches": len(times)}


class Stack:
    """`medindex up` in its own home and port, for one measured run."""

    def __init__(
        self,
        settings: Settings,
        home: Path,
        model: str,
        embed_workers: int,
        preprocessing: str,
        device: str,
    ) -> None:
        # Its own Redis on the port this process' Celery app was configured with.
        update = {"home": home, "model": model, "redis_url": None, "flower_port": 0,
                  "local_redis_port": settings.local_redis_port,
                  "preprocessing": preprocessing}  # fmt: skip
        self.settings = settings.model_copy(update=update)
        self.env = dict(os.environ, MEDINDEX_HOME=str(home), MEDINDEX_MODEL=model,
                        MEDINDEX_FLOWER_PORT="0", MEDINDEX_PREPROCESSING=preprocessing,
                        MEDINDEX_LOCAL_REDIS_PORT=str(settings.local_redis_port),
                        MEDINDEX_DEVICE=device,
                        MEDINDEX_EMBED_DECODE_WORKERS=str(settings.embed_decode_threads),
                        )  # fmt: skip
        self.env.pop("MEDINDEX_REDIS_URL", None)
        self.embed_workers = embed_workers
        self.log = home / "up.log"

    def __enter__(self) -> Stack:
        self.running = start_stack(self.env, self.log, "--embed-workers", str(self.embed_workers))
        self.process = self.running.process
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.stop(timeout_s=120)

    def ingest(self, data: Path, copies: int = 1) -> StackRun:
        """Ingest `copies` of the dataset as concurrent jobs (distinct source names, so
        distinct points) and time them from the first enqueue to the last write."""
        tracker = JobTracker(connect_redis(self.settings.broker_url))
        peaks: dict[str, int] = {}
        done = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(self.process.pid, peaks, done))
        sampler.start()
        started = time.perf_counter()
        jobs = [
            start_ingest(
                IngestRequest(SourceSpec(dataset=str(data), source_name=f"copy-{i}"), "bench"),
                self.settings,
            )
            for i in range(copies)
        ]
        running = {job_id for job_id, _, _ in jobs}
        while running:  # each job fed as its messages finish, all at once
            for job_id in list(running):
                feed(tracker, job_id, self.settings)
                if tracker.progress(job_id).finished:
                    running.discard(job_id)
            time.sleep(0.1)
        total = sum(images for _, images, _ in jobs)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        return StackRun(total, seconds, peaks)

    def search_figures(self, data: Path, copies: int, sizes: list[int]) -> dict[str, dict]:
        """Filtered searches through `SearchClient` on the collections `fill_search_collections`
        made: idle; while an ingest writes; while the store builds the largest one's index
        (searching the smallest); and on the largest once indexed."""
        client = SearchClient(self.settings)

        def search(name: str) -> object:
            return lambda vector: client.search(
                name, Query(vector=vector, filter=SEARCH_FILTER, limit=10)
            )

        figures = {f"idle_{n}": _latencies(search(f"search_{n}")) for n in sizes}
        largest, smallest = f"search_{max(sizes)}", f"search_{min(sizes)}"
        ingested = threading.Event()
        ingest = threading.Thread(target=lambda: (self.ingest(data, copies), ingested.set()))
        ingest.start()
        figures[f"ingesting_{max(sizes)}"] = _latencies(search(largest), until=ingested)
        ingest.join()
        store = open_store(self.settings)
        built = threading.Event()
        started = time.perf_counter()
        store.start_index(largest)
        poller = threading.Thread(target=_wait_for_index, args=(store, largest, built))
        poller.start()
        figures[f"indexing_{max(sizes)}_searching_{min(sizes)}"] = _latencies(
            search(smallest), until=built
        ) | {"index_build_s": round(time.perf_counter() - started, 1)}
        poller.join()
        figures[f"indexed_{max(sizes)}"] = _latencies(search(largest))
        return figures

    def bytes_per_queued_job(self, data: Path, jobs: int = 500) -> float:
        """Redis memory of `jobs` embed messages parked on a queue no worker reads."""
        from pipeline.schemas import EmbedJob
        from pipeline.sources import resolve

        client = connect_redis(self.settings.broker_url)
        ref = resolve(str(data))
        with senders.connection() as producer:
            for i in range(jobs):
                rows = list(range(i * 16, i * 16 + 16))
                job = EmbedJob(job_id=f"{i:012x}", collection="bench", source=ref,
                               model=self.settings.model, rows=rows)  # fmt: skip
                senders.send_embed_job(job, producer, queue=PROBE_QUEUE)
        used = client.memory_usage(PROBE_QUEUE, samples=0)
        client.delete(PROBE_QUEUE)
        return used / jobs


def _wait_for_index(store: Admin, name: str, built: threading.Event) -> None:
    while not store.index_ready(name):
        time.sleep(0.5)
    built.set()


def _sample_rss(root: int, peaks: dict[str, int], done: threading.Event) -> None:
    while not done.is_set():
        try:
            children = psutil.Process(root).children(recursive=True)
        except psutil.Error:
            return
        for process in children:
            try:
                name = _role(process)
                peaks[name] = max(peaks.get(name, 0), process.memory_info().rss)
            except psutil.Error:
                continue
        time.sleep(0.2)


def _role(process: psutil.Process) -> str:
    cmdline = " ".join(process.cmdline())
    if "redis-server" in cmdline:
        return "redis"
    queue = "embed" if "-Q embed" in cmdline else "store" if "-Q upsert,store" in cmdline else "?"
    is_child = "celery" in " ".join(process.parent().cmdline()) and "worker" in cmdline
    return f"{queue} worker {'pool process' if is_child else 'main'}"


def run_bench(
    settings: Settings,
    n: int,
    embed_workers: int,
    copies: int,
    preprocessing: str,
    search_points: list[int],
    device: str = "auto",
) -> dict:
    device = bench_device(device)
    # The stacks run one after the other on a free port of their own, so a running
    # `medindex up` is left alone; this process' Celery app is pointed there before it connects.
    update = {"local_redis_port": free_port(), "redis_url": None, "device": device,
              "embed_concurrency": embed_workers}  # fmt: skip
    settings = settings.model_copy(update=update)
    app.conf.broker_url = settings.broker_url
    home = settings.home.resolve() / "bench"
    data = home / f"sample-{n}"
    if not (data / "data").exists():
        write_sample_dataset(data, n, seed=1)
    model = settings.model
    if not Path(model).exists():
        model = str(settings.home.resolve() / "models" / "vit-s16-random")
        if not (Path(model) / "config.json").exists():
            build_random_vit(Path(model))
    with tempfile.TemporaryDirectory() as tmp:
        a = seed_loop(data, model, Path(tmp) / "seed-store", device)
    jpegs = jpegs_of(data, min(n, 128))
    embedder = Embedder(model, device, preprocessing="fast", kernels=Kernels.of(settings))
    b = model_ceiling(embedder, jpegs, settings.embed_pass_size)
    b_precision = str(embedder.half or "float32").removeprefix("torch.")
    decode = decode_ceiling(embedder, jpegs_of(data, n), os.cpu_count() or 1)
    del embedder
    half = settings.precision if settings.precision in ("bf16", "fp16") else "bf16"
    precision = precision_parity(model, device, jpegs, half)
    parity = preprocessing_parity(data, model, settings)
    writes = store_writes()
    warmup = home / "warmup"
    if not (warmup / "data").exists():
        write_sample_dataset(warmup, 32, seed=2)
    # Each stack first ingests a few images, so that loading the model and opening the
    # dataset in the workers is not timed (the seed's loop is timed after its loading too).
    for stack_home in ("stack-c", "stack-d"):  # the bench's own scratch stores, made afresh
        shutil.rmtree(home / stack_home / "qdrant", ignore_errors=True)
    search_root = home / "stack-d" / "qdrant"
    fill_search_collections(search_root, search_points)
    names = [f"search_{size}" for size in search_points]
    in_process = in_process_searches(search_root, names)
    stack_c = Stack(settings, home / "stack-c", model, embed_workers, preprocessing, device)
    with stack_c as stack:
        stack.ingest(warmup)
        with GpuSampler() as gpu:
            c = stack.ingest(data)
        per_job = stack.bytes_per_queued_job(data)
    stack_d = Stack(settings, home / "stack-d", TRIVIAL_MODEL, embed_workers, preprocessing, device)
    with stack_d as stack:
        stack.ingest(warmup)
        d = stack.ingest(data, copies=copies)
        searches = stack.search_figures(data, copies, search_points)
    in_process |= {  # the largest again, now that the stack built its HNSW index
        f"{name}_indexed": figure
        for name, figure in in_process_searches(search_root, names[-1:]).items()
    }
    return {
        "machine": describe_machine(device),
        "device": device,
        "images": n,
        "a_seed_loop": a,
        "b_model_ceiling": b,
        "b_batch": settings.embed_pass_size,
        "b_precision": b_precision,
        "c_pipeline": c.rate,
        "decode_ceiling": decode,
        "decode_workers": settings.embed_decode_threads,
        "d_orchestration": d.rate,
        "d_images": d.images,
        "c_over_a": c.rate / a,
        "c_over_b": c.rate / b,
        "c_over_bound": c.rate / min(b, decode),
        **gpu.figures(),
        "peak_rss_mb": {k: round(v / 2**20) for k, v in sorted(c.peak_rss.items())},
        "redis_bytes_per_queued_job": round(per_job),
        "embed_workers": embed_workers,
        "preprocessing": preprocessing,
        "parity": parity,
        "precision_parity": precision,
        "store_points_per_s": writes,
        "search_in_process": in_process,
        "search_client": searches,
    }
