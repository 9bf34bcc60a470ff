"""`make chaos` at a size that fits CI: the same code, a one-layer model, fewer images and kills."""

from __future__ import annotations

import json
import subprocess
import sys


def test_random_kills_lose_nothing_and_double_nothing() -> None:
    argv = ["--images", "160", "--kills", "4", "--layers", "1", "--seed", "1", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "producers.drills.chaos", *argv],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(done.stdout.strip().splitlines()[-2])  # the figures line, kept in pytest's report
    assert figures["kills"] == figures["restarts"] == 4
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert figures["indexed"] == figures["valid"] and figures["bad_indexed"] == 0
    assert figures["bad_reported"] == figures["bad_tried"] > 0
    assert figures["indexed_after_retry"] == figures["images"]
    assert figures["ok"], done.stderr[-3000:]
