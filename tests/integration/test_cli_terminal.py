"""`medindex search` as a user reads it: in an 80-column terminal (a pseudo-terminal) the top
hit's key and id are whole, and `--key` finds a case by the key the table shows."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from support import assert_one_line_error

from producers.harness import RunningStack
from search_api import SearchClient


def run_in_terminal(env: dict, *argv: str, columns: int = 80) -> str:
    """A `medindex` command on a pseudo-terminal `columns` wide; what it wrote there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "dumb"}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv],
        stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert child.wait(timeout=120) == 0, output.decode(errors="replace")
    os.close(leader)
    return output.decode()


def test_top_hit_key_and_id_are_whole_at_80_columns(stack: RunningStack, ingested: dict) -> None:
    some = SearchClient().scroll("skin", limit=1)["points"][0]
    key = some["payload"]["source"]["key"]
    shown = run_in_terminal(stack.env, "search", "--collection", "skin", "--key", key,
                            "--limit", "3")  # fmt: skip
    lines = [line.rstrip() for line in shown.replace("\r", "").splitlines()]
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "score" in line)
    assert header.split()[1:6] == ["image_id", "┃", "score", "┃", "id"]
    top = next(line for line in lines if line.startswith("│"))  # the query's own point
    assert top.split()[1] == key and some["id"] in top.split()


def test_search_by_key(stack: RunningStack, ingested: dict) -> None:
    some = SearchClient().scroll("skin", limit=1)["points"][0]
    key = some["payload"]["source"]["key"]
    result = stack.medindex("search", "--collection", "skin", "--key", key, "--limit", "1",
                            "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.json()[0]["id"] == some["id"]
    missing = stack.medindex("search", "--collection", "skin", "--key", "ISIC_none")
    assert_one_line_error(missing, "no point with key 'ISIC_none'")
