"""The `medindex` command: each package registers its own subcommands (entry points
`medindex.commands`), so this dispatcher imports none of them directly."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

import redis

from pipeline.errors import MedindexError, first_line, mask_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medindex", description="Distributed ingestion and search of medical images."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group="medindex.commands"), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # subcommands import the settings: a bad one is reported here
    except MedindexError as exc:
        print(f"medindex: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
