"""`bench`: the pipeline against the seed's loop and the model and orchestration ceilings."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console

from pipeline.settings import PREPROCESSINGS, get_settings


def register_bench(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--n", type=int, default=320, help="generated 600x450 JPEGs")
    cmd.add_argument(
        "--embed-workers", type=int, default=None, help="default: MEDINDEX_EMBED_CONCURRENCY"
    )
    cmd.add_argument(
        "--copies", type=int, default=40,
        help="dataset copies ingested for (d): enough that the last partial write's quiet "
        "interval (MEDINDEX_FLUSH_INTERVAL_S) weighs little",
    )  # fmt: skip
    cmd.add_argument(
        "--preprocessing", choices=PREPROCESSINGS, default=None,
        help="the pipeline's, in (c) (default: MEDINDEX_PREPROCESSING)",
    )  # fmt: skip
    cmd.add_argument(
        "--search-points", type=_sizes, default=[10_000, 100_000],
        help="comma-separated sizes of the collections searched (default: 10000,100000)",
    )  # fmt: skip
    cmd.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None,
        help="where (a), (b) and (c) run (default: MEDINDEX_DEVICE)",
    )  # fmt: skip
    cmd.add_argument(
        "--decode-workers", type=int, default=None,
        help="decoding threads per embed process in (c) (default: MEDINDEX_EMBED_DECODE_WORKERS)",
    )  # fmt: skip
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_bench)


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        sizes = []
    if len(sizes) < 2 or sizes[0] < 1:
        raise argparse.ArgumentTypeError("two or more positive sizes, e.g. 10000,100000")
    return sizes


def _bench(args: argparse.Namespace) -> int:
    from pipeline.samples.skin import BENCH_FILTER_TEXT
    from producers.bench import run_bench

    settings = get_settings()
    if args.decode_workers:
        settings = settings.model_copy(update={"embed_decode_workers": args.decode_workers})
    workers = args.embed_workers or settings.embed_concurrency
    preprocessing = args.preprocessing or settings.preprocessing
    result = run_bench(
        settings, args.n, workers, args.copies, preprocessing, args.search_points,
        args.device or settings.device,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    out = Console()
    out.print(f"machine: {result['machine']}; {result['images']} images, {workers} embed worker(s)")
    out.print(f"(a) seed loop            {result['a_seed_loop']:8.1f} images/s")
    out.print(
        f"(b) model ceiling        {result['b_model_ceiling']:8.1f} images/s "
        f"(batches of {result['b_batch']}, {result['b_precision']})"
    )
    out.print(
        f"(c) pipeline             {result['c_pipeline']:8.1f} images/s ({preprocessing}, "
        f"{result['decode_workers']} decode threads per embed process)"
    )
    out.print(f"    decode ceiling       {result['decode_ceiling']:8.1f} images/s (all cores)")
    d, d_images = result["d_orchestration"], result["d_images"]
    out.print(f"(d) orchestration        {d:8.1f} images/s ({d_images} images)")
    out.print(
        f"c/a = {result['c_over_a']:.2f}   c/b = {result['c_over_b']:.2f}   "
        f"c/min(b, decode ceiling) = {result['c_over_bound']:.2f}"
    )
    utilisation, memory = result["gpu_utilisation_pct"], result["gpu_peak_memory_mib"]
    out.print(
        f"GPU during (c): utilisation {'n/a' if utilisation is None else f'{utilisation}%'}, "
        f"peak memory {'n/a' if memory is None else f'{memory:.0f} MiB'}"
    )
    half = result["precision_parity"]
    out.print(
        f"{half['precision']} vs float32 vectors: mean cosine {half['mean_cosine']:.5f}, "
        f"top-10 overlap {half['top10_overlap']:.3f}"
    )
    out.print(f"peak RSS (MiB): {result['peak_rss_mb']}")
    out.print(f"Redis bytes per queued job: {result['redis_bytes_per_queued_job']}")
    parity = result["parity"]
    out.print(
        f"fast vs exact preprocessing: mean cosine {parity['mean_cosine']:.5f}, top-10 overlap "
        f"{parity['top10_overlap']:.3f}, {parity['prep_ms_fast']:.2f} ms vs "
        f"{parity['prep_ms_exact']:.2f} ms per image (decode + preprocess)"
    )
    writes = result["store_points_per_s"]
    edge, flushed, local = writes["edge"], writes["edge_flush_every_write"], writes["local_mode"]
    out.print(
        f"embedded store, 1,000-point writes: Qdrant Edge {edge:.0f} points/s, flushing every "
        f"write {flushed:.0f} ({edge / flushed:.2f}x), qdrant-client local mode {local:.0f} "
        f"({edge / local:.1f}x)"
    )
    out.print(f"filtered search ({BENCH_FILTER_TEXT}), p50 / p95 ms:")
    for where in ("search_in_process", "search_client"):
        for name, figure in result[where].items():
            extra = (
                f", index built in {figure['index_build_s']} s" if "index_build_s" in figure else ""
            )
            out.print(
                f"  {where.removeprefix('search_')} {name}: {figure['p50_ms']} / "
                f"{figure['p95_ms']} ({figure['searches']} searches{extra})"
            )
    return 0


def register_bench_scale(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--points", type=_positive, default=1_000_000, help="rows ingested")
    cmd.add_argument("--json", action="store_true", help="last line: the figures as JSON")
    cmd.set_defaults(run=_bench_scale)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a positive number of points, not {text!r}")
    return int(text)


def _bench_scale(args: argparse.Namespace) -> int:
    from producers.scale import KEYS, run_scale

    def say(line: str) -> None:  # whole lines, never wrapped: a progress line is JSON
        print(line, file=sys.stderr, flush=True)

    figures = run_scale(get_settings(), args.points, say)
    if args.json:
        print(json.dumps(figures))
    else:
        Console().print_json(json.dumps({key: figures[key] for key in KEYS}))
    return 0
