"""`medindex search`: one query from the command line, as a table or as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.errors import MedindexError
from pipeline.settings import get_settings

SHOWN_FIELDS = ("image_id", "dx", "age", "sex", "localization")


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("search", help="similar cases by image, point id or vector")
    cmd.add_argument("--collection", default=None, help="default: MEDINDEX_COLLECTION")
    what = cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="a query image file")
    what.add_argument("--id", dest="point_id", help="an indexed point's id")
    what.add_argument("--vector", help="a JSON list of floats")
    cmd.add_argument("--filter", help="Qdrant JSON filter, or @file.json")
    cmd.add_argument(
        "--model", help="query with this model (refused if the collection records another)"
    )
    cmd.add_argument("--limit", type=int, default=10)
    cmd.add_argument("--score-threshold", type=float, default=None)
    cmd.add_argument("--group-by", help="the closest case per value of this payload field")
    cmd.add_argument("--json", action="store_true", help='print [{"id", "score", "payload"}]')
    cmd.set_defaults(run=_search)


def register_serve(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("serve", help="the search API over HTTP (JSON; image uploads)")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=8000)
    cmd.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("search_api.http:app", host=args.host, port=args.port, log_level="info")
    return 0


def _search(args: argparse.Namespace) -> int:
    from search_api.client import Query, SearchClient  # qdrant-client: slow to import

    collection = args.collection or get_settings().collection
    query = Query(
        image=args.image,
        point_id=args.point_id,
        vector=_json_arg(args.vector, "vector") if args.vector else None,
        filter=_json_arg(args.filter, "filter") if args.filter else None,
        limit=args.limit,
        score_threshold=args.score_threshold,
    )
    client = SearchClient(model=args.model)
    if args.group_by:
        groups = client.groups(collection, query, args.group_by, groups=args.limit)
        hits = [hit | {"group": g["group"]} for g in groups for hit in g["hits"]]
    else:
        hits = client.search(collection, query)
    if args.json:
        print(json.dumps(hits))
    else:
        _print_table(hits)
    return 0


def _json_arg(text: str, what: str) -> object:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise MedindexError(f"cannot read {what} file {text[1:]}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedindexError(
            f"malformed {what}: not JSON ({exc.msg} at column {exc.colno})"
        ) from exc


def _print_table(hits: list[dict]) -> None:
    table = Table("score", "id", *SHOWN_FIELDS)
    for hit in hits:
        payload = hit["payload"]
        values = [str(payload.get(name, "")) for name in SHOWN_FIELDS]
        table.add_row(f"{hit['score']:.4f}", hit["id"], *values)
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)
