"""The `medindex` command: a table of every subcommand, the one place that names them.

`medindex --help` lists the table without importing a command's module; `medindex X` imports
only X's, whose function adds X's arguments and its `run`. Adding a command is a line here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NamedTuple

from pipeline.errors import MedindexError, first_line, mask_url


class Command(NamedTuple):
    register: str  # "module:function", called with the command's parser
    help: str  # one line, in `medindex --help`


COMMANDS = {
    "sample-data": Command(
        "producers.commands.data:register_sample_data",
        "write synthetic data in one of the seeds' layouts",
    ),
    "make-model": Command(
        "producers.commands.data:register_make_model",
        "save a randomly initialised model offline: ViT-S/16 (dino-vits16's shape) or "
        "ResNet-50 (microsoft/resnet-50's)",
    ),
    "ingest": Command(
        "producers.commands.jobs:register_ingest", "index a dataset through the running pipeline"
    ),
    "retry": Command(
        "producers.commands.jobs:register_retry",
        "send a job's failed images again (parked points, fixed images)",
    ),
    "report": Command(
        "producers.commands.jobs:register_report",
        "a job's progress and each failed image's reason",
    ),
    "status": Command(
        "producers.commands.jobs:register_status", "queue depths, live workers, jobs' progress"
    ),
    "cancel": Command(
        "producers.commands.jobs:register_cancel", "stop a job: its queued shards are skipped"
    ),
    "audit": Command(
        "producers.commands.audit:register_audit",
        "duplicates, leaks across splits and patients, label conflicts, outliers",
    ),
    "reindex": Command(
        "producers.commands.versions:register_reindex",
        "build a new version behind an alias, verify it, then switch atomically",
    ),
    "rollback": Command(
        "producers.commands.versions:register_rollback",
        "point an alias back at its previous version",
    ),
    "collections": Command(
        "producers.commands.versions:register_collections",
        "collections and versions, with what made them",
    ),
    "bench": Command(
        "producers.commands.bench:register_bench",
        "pipeline vs the seed's loop vs the model and orchestration ceilings",
    ),
    "bench-scale": Command(
        "producers.commands.bench:register_bench_scale",
        "the scale curve: ingest N points through the stack, then search and index them",
    ),
    "demo": Command(
        "producers.demo:register", "run the whole pipeline on sample data, then search"
    ),
    "up": Command(
        "pipeline.stack:register", "run Redis and the workers locally, in the foreground"
    ),
    "worker": Command(
        "pipeline.worker:register", "run one embed or store worker in the foreground"
    ),
    "search": Command(
        "search_api.cli:register_search", "similar cases by image, point id or vector"
    ),
    "serve": Command(
        "search_api.cli:register_serve", "the search API over HTTP (JSON; image uploads)"
    ),
    "image": Command(
        "search_api.cli:register_image",
        "save the picture a point was embedded from (same slice, window, crop)",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only `command`'s module imported, to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="medindex", description="Distributed ingestion and search of medical images."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(COMMANDS):
        cmd = commands.add_parser(name, help=COMMANDS[name].help)
        if name == command:
            module, function = COMMANDS[name].register.split(":")
            getattr(importlib.import_module(module), function)(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # a command's module imports the settings: a bad one is reported here
        parser = build_parser(argv[0] if argv else None)
    except MedindexError as exc:
        print(f"medindex: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import redis  # the broker's errors: not needed to list the commands

    try:
        return int(args.run(args) or 0)
    except MedindexError as exc:
        print(f"medindex {args.command}: error: {mask_url(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:  # Redis lost for longer than the clients' retries
        reason = mask_url(first_line(exc))
        print(f"medindex {args.command}: error: lost Redis: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medindex {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
