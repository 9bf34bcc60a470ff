"""`make cluster` at a size that fits CI: the same hosts and faults, a one-layer model, fewer
images. Root only (network namespaces): without them the harness fails on one line, never
skips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(1500)
def test_hosts_over_tcp_with_links_cut_lose_nothing_and_double_nothing() -> None:
    argv = ["--images", "120", "--layers", "1", "--seed", "2", "--json"]
    run = subprocess.Popen(
        [sys.executable, "-m", "producers.drills.cluster", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = run.communicate(timeout=1200)
    finally:  # SIGTERM, never SIGKILL: the harness removes its namespaces on the way out
        if run.poll() is None:
            run.terminate()
            run.communicate(timeout=120)
    done = subprocess.CompletedProcess(run.args, run.returncode, stdout.decode(), stderr.decode())
    lines = done.stdout.strip().splitlines()
    assert done.returncode in (0, 1), (lines or [""])[-1] + done.stderr[-3000:]
    figures = json.loads(lines[-1])
    print(lines[-2])  # the figures line, kept in pytest's report
    assert figures["hosts"] == 6 and figures["faults"] == 4
    assert figures["exact_after_fault"] == [True] * 4
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert figures["flower_workers"] == 2  # both embed workers, with tasks, on Flower's host
    assert figures["ok"], done.stderr[-3000:]
