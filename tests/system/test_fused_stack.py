"""Fused passes on a stack of their own, with the embed pool process killed mid-call."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from support import ARTIFACTS, N_IMAGES, free_port

from pipeline.embed import embed_job
from pipeline.embedder import Embedder
from pipeline.progress import JobTracker, connect_redis
from pipeline.schemas import EmbedJob
from pipeline.settings import Settings
from pipeline.sources import resolve
from pipeline.store.edge import EdgeStore
from producers.drills.chaos import kill_and_wait_for_restart
from producers.harness import RunningStack, running_stack


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
    while tracker.redis.bitcount("medindex:job:fused:embedded") < 64:
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
    expected = alone.batch.matrix()
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)  # cosine: kept unit
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
