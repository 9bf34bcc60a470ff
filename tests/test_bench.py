"""`medindex bench` on a small run: every figure it reports is measured, on real stacks."""

from __future__ import annotations

from conftest import run_medindex


def test_bench_reports_every_figure(base_env: dict[str, str]) -> None:
    done = run_medindex(
        "bench", "--n", "128", "--copies", "2", "--embed-workers", "1",
        "--search-points", "1000,3000", "--json",
        env=base_env, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = done.json()
    rates = ("a_seed_loop", "b_model_ceiling", "c_pipeline", "d_orchestration")
    assert all(result[name] > 0 for name in rates), result
    assert result["d_images"] == 2 * 128
    assert result["c_over_a"] == result["c_pipeline"] / result["a_seed_loop"]
    assert {"embed worker pool process", "store worker pool process"} <= set(result["peak_rss_mb"])
    assert 0 < result["redis_bytes_per_queued_job"] < 4096
    assert result["parity"]["mean_cosine"] > 0.99 and result["parity"]["top10_overlap"] > 0.5
    assert set(result["store_points_per_s"]) == {"edge", "local_mode"}
    assert all(rate > 0 for rate in result["store_points_per_s"].values())
    assert set(result["search_in_process"]) == {
        "search_1000", "search_3000", "search_3000_indexed"
    }  # fmt: skip
    assert set(result["search_client"]) == {
        "idle_1000", "idle_3000", "ingesting_3000", "indexing_3000_searching_1000", "indexed_3000"
    }  # fmt: skip
    figures = [*result["search_in_process"].values(), *result["search_client"].values()]
    assert all(f["searches"] > 0 and 0 < f["p50_ms"] <= f["p95_ms"] for f in figures), figures
