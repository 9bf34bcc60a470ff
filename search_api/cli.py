"""The search side's commands: `search` (one query, as a table or as JSON), `serve` (the HTTP
API and the page), `image` (the picture a point was embedded from)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.errors import MedindexError
from pipeline.settings import get_settings


def register_search(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--collection", default=None, help="default: MEDINDEX_COLLECTION")
    what = cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="a query image file")
    what.add_argument("--id", dest="point_id", help="an indexed point's id")
    what.add_argument("--key", help="an indexed case's key (image id, file name, series)")
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


def register_serve(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=8000)
    cmd.set_defaults(run=_serve)


def register_image(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--collection", default=None, help="default: MEDINDEX_COLLECTION")
    cmd.add_argument("--id", dest="point_id", required=True, help="the point's id")
    cmd.add_argument("--out", type=Path, required=True, help="file to write (PNG, ...)")
    cmd.set_defaults(run=_image)


def _image(args: argparse.Namespace) -> int:
    from pipeline.picture import picture_of
    from pipeline.store import open_reader

    settings = get_settings()
    collection = args.collection or settings.collection
    found = open_reader(settings).retrieve(collection, [args.point_id])
    if not found:
        raise MedindexError(f"no point {args.point_id!r} in collection {collection!r}")
    source = found[0]["payload"].get("source")
    if not source:
        raise MedindexError(f"point {args.point_id!r} carries no source reference")
    picture = picture_of(source, settings)
    try:
        picture.save(args.out)
    except (ValueError, OSError) as exc:  # an unknown extension, an unwritable folder
        raise MedindexError(f"cannot write {args.out}: {exc}") from exc
    Console(stderr=True).print(f"wrote {picture.width}x{picture.height} picture to {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("search_api.http:app", host=args.host, port=args.port, log_level="info")
    return 0


def _search(args: argparse.Namespace) -> int:
    from search_api.query import Query, read_query_file

    settings = get_settings()
    collection = args.collection or settings.collection
    query = Query(  # the arguments and the query file, checked before anything is loaded
        image=read_query_file(args.image, settings.max_image_bytes) if args.image else None,
        point_id=args.point_id,
        vector=_json_arg(args.vector, "vector") if args.vector else None,
        filter=_json_arg(args.filter, "filter") if args.filter else None,
        limit=args.limit,
        score_threshold=args.score_threshold,
    )
    from search_api.client import SearchClient  # qdrant-client: slow to import

    client = SearchClient(settings, model=args.model)
    if args.key:
        query.point_id = client.id_of_key(collection, args.key)
    if args.group_by:
        groups = client.groups(collection, query, args.group_by, groups=args.limit)
        hits = [hit | {"group": g["group"]} for g in groups for hit in g["hits"]]
    else:
        hits = client.search(collection, query)
    if args.json:
        print(json.dumps(hits))
    else:
        metadata = client.store.metadata(collection)
        key_field = (metadata.get("schema") or {}).get("key_field")
        print_hits(hits, shown_fields(metadata, hits), key_field)
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


def shown_fields(metadata: dict, hits: list[dict]) -> list[str]:
    """The collection's own fields: its recorded schema's (the key and label fields first), or,
    for a collection from before schemas were recorded, the keys its hits carry."""
    schema = metadata.get("schema")
    if schema:
        first = [schema.get("key_field"), schema.get("label_field")]
        return list(dict.fromkeys(name for name in (*first, *schema["fields"]) if name))
    keys = (name for hit in hits for name in hit["payload"])
    return [name for name in dict.fromkeys(keys) if name != "source"]


# Rich's table: a column costs its text, a space each side and a rule; the table one more.
COLUMN_COST, TABLE_COST = 3, 1
CELL_MOST, CELL_LEAST = 24, 8  # a payload column's width in a terminal (longer values end in …)


def print_hits(
    hits: list[dict], fields: list[str], key_field: str | None, console: Console | None = None
) -> None:
    """Key, score and id whole (the key and id are what `--key`, `--id` and `medindex image`
    take), then the payload fields that fit the terminal; piped, every field whole."""
    console = console or Console()
    fields = [name for name in fields if name != key_field]
    names = [key_field or "key", "score", "id", *fields]
    rows = [
        [_key_of(hit), f"{hit['score']:.4f}", hit["id"]]
        + [_cell(hit["payload"].get(name)) for name in fields]
        for hit in hits
    ]
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]
    kept = len(names)
    if console.is_terminal:
        kept, left = 3, console.width - TABLE_COST - sum(w + COLUMN_COST for w in widths[:3])
        for width in widths[3:]:
            width = min(width, CELL_MOST, left - COLUMN_COST)
            if width < min(widths[kept], CELL_LEAST):
                break
            widths[kept], left, kept = width, left - width - COLUMN_COST, kept + 1
    else:  # piped: as wide as the table is
        width = TABLE_COST + sum(w + COLUMN_COST for w in widths)
        console = Console(file=console.file, width=width)
    hidden = names[kept:]
    caption = f"not shown: {', '.join(hidden)} (--json shows every field)" if hidden else None
    table = Table(caption=caption, caption_justify="left")
    for name, width in zip(names[:kept], widths, strict=False):
        table.add_column(name, no_wrap=True, width=width, overflow="ellipsis")
    for row in rows:
        table.add_row(*row[:kept])
    console.print(table)


def _key_of(hit: dict) -> str:
    return str((hit["payload"].get("source") or {}).get("key", ""))


def _cell(value: object) -> str:
    if value is None:
        return ""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
