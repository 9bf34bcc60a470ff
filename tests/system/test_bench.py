"""`medindex bench` on a small run: every figure it reports is measured, on real stacks."""

from __future__ import annotations

from support import assert_one_line_error

from producers.harness import run_medindex


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
    assert result["device"] == "cpu" and result["decode_ceiling"] > 0
    assert (result["b_batch"], result["b_precision"]) == (16, "float32")  # CPU: one job a pass
    bound = min(result["b_model_ceiling"], result["decode_ceiling"])
    assert result["c_over_bound"] == result["c_pipeline"] / bound
    assert result["gpu_utilisation_pct"] is None and result["gpu_peak_memory_mib"] is None
    half = result["precision_parity"]  # bf16 autocast on CPU against float32
    assert half["precision"] == "bf16" and half["mean_cosine"] >= 0.999, half
    assert half["top10_overlap"] >= 0.95, half
    assert {"embed worker pool process", "store worker pool process"} <= set(result["peak_rss_mb"])
    assert 0 < result["redis_bytes_per_queued_job"] < 4096
    assert result["parity"]["mean_cosine"] > 0.99 and result["parity"]["top10_overlap"] > 0.5
    assert set(result["store_points_per_s"]) == {"edge", "edge_flush_every_write", "local_mode"}
    assert all(rate > 0 for rate in result["store_points_per_s"].values())
    assert set(result["search_in_process"]) == {
        "search_1000", "search_3000", "search_3000_indexed"
    }  # fmt: skip
    assert set(result["search_client"]) == {
        "idle_1000", "idle_3000", "ingesting_3000", "indexing_3000_searching_1000", "indexed_3000"
    }  # fmt: skip
    figures = [*result["search_in_process"].values(), *result["search_client"].values()]
    assert all(f["searches"] > 0 and 0 < f["p50_ms"] <= f["p95_ms"] for f in figures), figures


def test_bench_on_cuda_without_a_gpu_is_a_one_line_error(base_env: dict[str, str]) -> None:
    done = run_medindex("bench", "--device", "cuda", env=base_env, timeout=120)
    assert_one_line_error(done, "--device cuda: no CUDA device is visible to torch here")
