"""`medindex worker`: the command a host of its own runs (the cluster run starts every worker
with it, tests/system/test_cluster.py); here its refusals and the Celery command line it execs."""

from __future__ import annotations

import os

from pipeline.settings import get_settings
from pipeline.worker import worker_argv
from producers.harness import run_medindex


def test_roles_become_the_celery_workers_medindex_up_runs() -> None:
    settings = get_settings()
    embed = " ".join(worker_argv("embed", settings, 3, "gpu-1@%h"))
    assert "-A pipeline.celery_app worker -Q embed -n gpu-1@%h" in embed
    assert embed.endswith("-c 3 --prefetch-multiplier 4")  # two calls of two jobs
    store = " ".join(worker_argv("store", settings, None, "store@%h"))
    assert "-Q upsert,store" in store and "-c 1 --prefetch-multiplier 252" in store


def test_refusals_are_one_line() -> None:
    for args, said in (
        (["--role", "store", "--concurrency", "2"], "a store worker runs one process"),
        (["--role", "embed", "--concurrency", "0"], "must be at least 1"),
        (["--role", "gpu"], "invalid choice"),
    ):
        done = run_medindex("worker", *args, env=dict(os.environ), timeout=120)
        assert done.returncode != 0 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
