"""`medindex worker --role embed|store`: one worker on a host of its own, no `medindex up`.

The command lines here are the only place that says how each role's Celery worker runs:
`medindex up` starts its workers from them, and `medindex worker` replaces itself with one
(exec), so a supervisor (systemd, Kubernetes) signals Celery directly. The broker and the
store come from the settings (`MEDINDEX_REDIS_URL`, `MEDINDEX_QDRANT_URL` or `MEDINDEX_HOME`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Literal

from pipeline.errors import MedindexError
from pipeline.messages import EMBED_QUEUE, STORE_QUEUE, UPSERT_QUEUE
from pipeline.settings import Settings, get_settings

Role = Literal["embed", "store"]
ROLES: tuple[Role, ...] = ("embed", "store")
CELERY = ["-m", "celery", "-A", "pipeline.celery_app"]


def register(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--role", choices=ROLES, required=True)
    cmd.add_argument(
        "--concurrency",
        type=positive,
        default=None,
        help="embed processes (default: MEDINDEX_EMBED_CONCURRENCY)",
    )
    cmd.add_argument("--name", default=None, help="Celery node name (default: ROLE@HOSTNAME)")
    cmd.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    argv = worker_argv(args.role, settings, args.concurrency, args.name or f"{args.role}@%h")
    os.execv(sys.executable, [sys.executable, *argv])  # never returns


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def worker_argv(role: Role, settings: Settings, concurrency: int | None, name: str) -> list[str]:
    """The Celery worker's arguments (after the interpreter) for `role`.

    A store worker is one process: an embedded store allows one opener, and one buffer must
    collect a full write. It prefetches enough messages to fill that write.
    """
    queue = EMBED_QUEUE if role == "embed" else f"{UPSERT_QUEUE},{STORE_QUEUE}"
    queues = ["-Q", queue, "-n", name, "--loglevel", settings.log_level]
    if role == "embed":
        processes = concurrency or settings.embed_concurrency
        # Per process: the jobs of the call it runs and of the next one (celery-batches).
        prefetch = 2 * settings.embed_jobs_per_call
        return [*CELERY, "worker", *queues, "-c", str(processes), "--prefetch-multiplier",
                str(prefetch)]  # fmt: skip
    if concurrency not in (None, 1):
        raise MedindexError(
            "a store worker runs one process (it owns the store): drop --concurrency"
        )
    prefetch = 4 * math.ceil(settings.upsert_batch_size / settings.job_size)
    return [*CELERY, "worker", *queues, "-c", "1", "--prefetch-multiplier", str(prefetch)]


def flower_argv(settings: Settings, address: str, db: str) -> list[str]:
    """Flower on the broker of `settings`, listening on `address`, its state kept in `db`.
    Its workers' replies are awaited 5 s, not 1: workers busy embedding on a few shared cores
    answer late, and each late reply was a warning ("Inspect method stats failed")."""
    port = settings.flower_port
    return [
        *CELERY,
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--persistent=True",
        f"--db={db}",
        "--inspect_timeout=5000",
    ]
