"""Versions behind an alias: `reindex`, `rollback`, `collections`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from rich.console import Console
from rich.table import Table

from pipeline.settings import get_settings
from producers.commands import err
from producers.commands.follow import progress_bar
from producers.commands.source_flags import add_source_flags, source_spec


def register_reindex(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--alias", required=True, help="the name searches use")
    add_source_flags(cmd)
    cmd.add_argument(
        "--min-quality", type=float, default=None, help="refuse below this k-NN agreement"
    )
    cmd.add_argument(
        "--max-quality-drop",
        type=float,
        default=None,
        help="refuse if this much worse than serving",
    )
    cmd.add_argument("--keep", type=int, default=2, help="old versions to keep (default 2)")
    cmd.add_argument("--json", action="store_true", help="last line: a JSON summary")
    cmd.set_defaults(run=_reindex)


def _reindex(args: argparse.Namespace) -> int:
    from producers.reindex import ReindexRequest, reindex  # datasets, qdrant-client: slow

    settings = get_settings()
    request = ReindexRequest(
        alias=args.alias,
        spec=source_spec(args, settings),
        min_quality=args.min_quality,
        max_quality_drop=args.max_quality_drop,
        keep=args.keep,
    )
    started = time.monotonic()
    with progress_bar(f"reindex {args.alias}", None) as show:
        summary = reindex(request, settings, show)
    summary["seconds"] = round(time.monotonic() - started, 1)
    err.print(
        f"{args.alias} -> {summary['collection']} (was {summary['previous']}): "
        f"{summary['indexed']} indexed, {summary['failed']} failed, "
        + summary.get(
            "quality_note",
            f"quality {summary['quality']} (was {summary['previous_quality']})",
        )
        + f", {summary['seconds']}s"
        + (f"; deleted {', '.join(summary['deleted'])}" if summary["deleted"] else "")
        + (f"; abandoned {summary['abandoned']}" if "abandoned" in summary else "")
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def register_rollback(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--alias", required=True)
    cmd.set_defaults(run=_rollback)


def _rollback(args: argparse.Namespace) -> int:
    from pipeline.store import open_store
    from producers.reindex import rollback

    was, now = rollback(open_store(get_settings()), args.alias)
    err.print(f"{args.alias} -> {now} (was {was})")
    return 0


def register_collections(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_collections)


def _collections(args: argparse.Namespace) -> int:
    from pipeline.catalog import collection_rows
    from pipeline.store import open_store

    rows = collection_rows(open_store(get_settings()))
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows]))
        return 0
    table = Table("collection", "serving as", "points", "model", "dataset", "quality", "created")
    for row in rows:
        created = row.created_at and time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created_at))
        table.add_row(
            row.collection, row.alias or "", str(row.points), str(row.model),
            str(row.dataset), str(row.quality), created or "",
        )  # fmt: skip
    Console(width=200).print(table)
    return 0
