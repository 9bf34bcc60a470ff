"""`medindex bench-scale` on a short run (issue 23): its progress lines and every key of its
final JSON line, measured on a real stack of its own."""

from __future__ import annotations

import json

from producers.harness import run_medindex
from producers.scale import KEYS

POINTS = 20_000  # two progress lines at a step of 10,000 would need another step: one here


def test_bench_scale_reports_every_figure(base_env: dict[str, str]) -> None:
    done = run_medindex("bench-scale", "--points", str(POINTS), "--json", env=base_env,
                        timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = done.json()
    assert set(KEYS) <= set(result), set(KEYS) - set(result)
    assert (result["points"], result["failed"]) == (POINTS, 0)
    steps = [json.loads(line)["progress"] for line in done.stderr.splitlines()
             if line.startswith('{"progress"')]  # fmt: skip
    assert [step["points"] for step in steps] == [POINTS] == [s["points"] for s in result["steps"]]
    assert result["ingest_images_per_s"] > 0 and result["slowest_100k_images_per_s"] > 0
    assert result["store_rss_mib"] > 0 and result["disk_mib"] > 0
    assert 0 < result["store_anon_mib"] <= result["store_rss_mib"]
    # each collection opened afresh holds something, and the int8 one less than float32's
    assert 0 < result["store_int8_mib"] < result["store_reopened_mib"], result["footprints"]
    assert 0 < result["redis_peak_mib"] < 100  # bounded queues: a few MiB whatever N
    assert result["indexed"] is True  # every point in the index, the collection served meanwhile
    assert result["recall_at_10"] >= 0.95 and result["recall_at_10_int8"] >= 0.93, result
    for key in ("idle", "ingest"):
        assert result[f"search_{key}_p50_ms"] <= result[f"search_{key}_p95_ms"]
