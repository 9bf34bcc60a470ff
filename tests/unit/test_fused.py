"""Issue 17: several jobs embedded in one forward pass, their decoding overlapped with the model;
half precision's vectors against float32's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest
from conftest import ARTIFACTS, N_IMAGES, free_port

from pipeline.embed import embed_job, embed_jobs
from pipeline.embedder import DeviceJpeg, Embedder, Kernels
from pipeline.images import decode_rgb
from pipeline.model_info import ModelError
from pipeline.progress import JobTracker, connect_redis
from pipeline.quality import embedding_parity
from pipeline.schemas import EmbedJob, PointBatch
from pipeline.settings import Settings, get_settings
from pipeline.sources import resolve
from pipeline.store.edge import EdgeStore
from producers.drills.chaos import kill_and_wait_for_restart
from producers.harness import RunningStack, running_stack


def vectors(batch: PointBatch) -> np.ndarray:
    return np.frombuffer(batch.vectors, dtype=np.float32).reshape(len(batch.ids), batch.dim)


def test_fused_passes_give_each_job_the_points_it_gets_alone(
    tiny_model: Path, dataset: Path
) -> None:
    """Ten 16-image jobs in passes of 64 (decoded on three threads), and a job whose rows are
    gone: each job gets its own points, the vectors it gets when embedded alone, and the job
    that cannot be read fails alone."""
    ref, settings = resolve(str(dataset)), get_settings()
    embedder = Embedder(str(tiny_model), "cpu", preprocessing="fast")

    def job(rows: range) -> EmbedJob:
        return EmbedJob(job_id="fused", collection="fused", source=ref, model=str(tiny_model),
                        rows=list(rows))  # fmt: skip

    jobs = [job(range(start, start + 16)) for start in range(0, 160, 16)]
    gone = job(range(N_IMAGES - 8, N_IMAGES + 8))
    jobs.insert(3, gone)
    with ThreadPoolExecutor(3) as decoder:
        fused = list(embed_jobs(jobs, embedder, settings, 64, decoder))
    assert sorted(id(j) for j, _ in fused) == sorted(id(j) for j in jobs)  # each job once
    outcomes = {id(j): outcome for j, outcome in fused}
    assert isinstance(outcomes[id(gone)], IndexError)
    for one in jobs:
        if one is gone:
            continue
        alone, got = embed_job(one, embedder, settings), outcomes[id(one)]
        assert got.batch.rows == alone.batch.rows == one.rows
        assert got.batch.ids == alone.batch.ids and got.failures == alone.failures == []
        np.testing.assert_allclose(vectors(got.batch), vectors(alone.batch), rtol=1e-4, atol=1e-5)


def test_bf16_vectors_keep_parity_with_float32_on_cpu(tiny_model: Path, dataset: Path) -> None:
    """The thresholds the bench holds half precision to on a GPU, here with CPU autocast."""
    table = datasets.load_dataset(str(dataset), split="train").select(range(128))
    jpegs = [i["bytes"] for i in table.cast_column("image", datasets.Image(decode=False))["image"]]
    exact = Embedder(str(tiny_model), "cpu", preprocessing="fast")
    half = Embedder(str(tiny_model), "cpu", preprocessing="fast", kernels=Kernels("bf16"))
    assert half.half is not None and exact.half is None  # "auto" is float32 on CPU
    pictures = [decode_rgb(jpeg, 50_000_000, 2**25, exact.draft_size) for jpeg in jpegs]
    reference, candidate = exact.embed(pictures), half.embed(pictures)
    assert candidate.dtype == np.float32 and candidate.shape == reference.shape
    assert not np.array_equal(candidate, reference)  # the pass really ran in bf16
    parity = embedding_parity(reference, candidate)
    assert parity["mean_cosine"] >= 0.999 and parity["top10_overlap"] >= 0.95, parity


@pytest.fixture()
def fused_stack(base_env: dict, tmp_path: Path) -> Iterator[RunningStack]:
    """`medindex up` of its own whose embed worker fuses four jobs per pass (calls of 8)."""
    env = base_env | {
        "MEDINDEX_HOME": str(tmp_path / "home"),
        "MEDINDEX_LOCAL_REDIS_PORT": str(free_port()),
        "MEDINDEX_FLOWER_PORT": "0",
        "MEDINDEX_EMBED_BATCH_SIZE": "64",
    }
    with running_stack(env, ARTIFACTS / "fused-stack.log") as stack:
        yield stack


def test_fused_jobs_are_indexed_exactly_and_a_killed_call_comes_back(
    fused_stack: RunningStack, dataset: Path, tiny_model: Path
) -> None:
    """An ingest through fused passes with the embed pool process killed mid-call: its
    unacknowledged jobs come back, every image is indexed once, with the vector it gets
    embedded alone."""
    env, up = fused_stack.env, fused_stack.process
    settings = Settings(home=Path(env["MEDINDEX_HOME"]),
                        local_redis_port=int(env["MEDINDEX_LOCAL_REDIS_PORT"]))  # fmt: skip
    ingest = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ingest", "--dataset", str(dataset),
         "--collection", "fused", "--job-id", "fused", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tracker = JobTracker(connect_redis(settings.broker_url))
    deadline = time.monotonic() + 180
    while tracker.redis.scard("medindex:job:fused:embedded") < 64:
        assert time.monotonic() < deadline and ingest.poll() is None
        time.sleep(0.05)
    assert kill_and_wait_for_restart(psutil.Process(up.pid), "embed pool process")
    out, err = ingest.communicate(timeout=300)
    assert ingest.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["indexed"], summary["failed"]) == (N_IMAGES, 0), summary
    up.terminate()  # the store worker owns the store: read it directly once it stopped
    assert up.wait(timeout=90) == 0
    store = EdgeStore(settings.embedded_store_path)
    assert store.count("fused") == N_IMAGES
    job = EmbedJob(job_id="check", collection="fused", source=resolve(str(dataset)),
                   model=str(tiny_model), rows=list(range(40, 56)))  # fmt: skip
    alone = embed_job(job, Embedder(str(tiny_model), "cpu", preprocessing="fast"), settings)
    found = {p["id"]: p["vector"] for p in store.retrieve("fused", alone.batch.ids, True)}
    stored = np.array([found[i] for i in alone.batch.ids], dtype=np.float32)
    expected = vectors(alone.batch)
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)  # cosine: kept unit
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)


def test_gpu_jpeg_decoding_without_its_extra_is_a_one_line_error() -> None:
    """torchvision is an optional extra, imported only when MEDINDEX_GPU_DECODE asks for it."""
    with pytest.raises(ModelError, match="MEDINDEX_GPU_DECODE needs torchvision") as refused:
        DeviceJpeg("cuda")
    assert "\n" not in str(refused.value)
