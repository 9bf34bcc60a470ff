"""Versions behind an alias: `reindex`, `rollback`, `collections`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import PurePath

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
    settings = get_settings()
    spec = source_spec(args, settings)  # the arguments checked before the slow imports
    from producers.reindex import ReindexRequest, reindex  # datasets, qdrant-client: slow

    request = ReindexRequest(
        alias=args.alias,
        spec=spec,
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
    print_collections(rows, Console())
    return 0


def print_collections(rows: list, console: Console) -> None:
    """One line a collection: its name, points (and how many of them are outside its HNSW
    index, being or to be built in), quality and creation time never cut (the model and
    dataset columns wrap first), models and datasets by their distinguishing part."""
    table = Table(caption="model, dataset: paths shown from where they differ (--json: whole)")
    for name in ("collection", "alias", "points\n(unindexed)"):
        table.add_column(name, no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("dataset", overflow="fold")
    table.add_column("quality", no_wrap=True)
    table.add_column("created", no_wrap=True)
    models = distinguishing([row.model for row in rows])
    datasets = distinguishing([row.dataset for row in rows])
    for row, model, dataset in zip(rows, models, datasets, strict=True):
        created = row.created_at and time.strftime("%y-%m-%d %H:%M", time.localtime(row.created_at))
        quality = "" if row.quality is None else f"{row.quality:.3f}"
        points = f"{row.points} ({row.unindexed_points})"
        table.add_row(row.collection, row.alias or "", points, model, dataset, quality,
                      created or "")  # fmt: skip
    console.print(table)


def distinguishing(names: list[str | None]) -> list[str]:
    """Local paths without the folders they all share (one path alone: its name, a file's with
    its folder); hub ids (`facebook/dino-vits16`) and other names as they are."""
    paths = {name: PurePath(name).parts for name in names if name and _is_path(name)}
    shared = _common_prefix(list(paths.values())) if len(set(paths)) > 1 else None
    shown = []
    for name in names:
        parts = paths.get(name or "")
        if parts is None:
            shown.append(name or "")
            continue
        alone = parts[-2:] if PurePath(*parts).suffix else parts[-1:]
        rest = parts[len(shared) :] if shared is not None else alone
        shown.append(str(PurePath(*(rest or parts[-1:]))))
    return shown


def _is_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _common_prefix(parts: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The folders every path shares, short of any path's last part."""
    shared = PurePath(os.path.commonpath([PurePath(*p) for p in parts])).parts
    return shared[: min(len(shared), min(len(p) for p in parts) - 1)]
