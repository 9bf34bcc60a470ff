"""Only embed workers import torch: producers, the operator's commands and the search API start
without it (and without transformers), each checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")

# What each side loads: `medindex X` builds X's parser (the table names the others), then runs.
SIDES = {
    "producers": "import producers.ingest, producers.reindex, producers.status, pipeline.catalog",
    "medindex status, collections": "from pipeline.cli import build_parser; "
    "build_parser('status'); build_parser('collections'); "
    "import producers.status, pipeline.catalog, pipeline.remote_store",
    "search API": "import search_api, search_api.client, search_api.http",
}


@pytest.mark.parametrize("side", SIDES)
def test_imports_no_torch(side: str) -> None:
    check = f"import sys; loaded = [m for m in {HEAVY!r} if m in sys.modules]; print(loaded)"
    code = f"{SIDES[side]}; {check}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{side} imports {result.stdout.strip()}"
