"""Subcommands of the producer side: sample-data, make-model, ingest, report."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as ProgressBar
from rich.table import Table
from rich.text import Text

from pipeline.errors import MedindexError
from pipeline.progress import JobTracker, Progress, connect_redis
from pipeline.settings import PREPROCESSINGS, get_settings

FORMATS = ("hf", "table", "nifti", "dicom")  # checked by the readers' registry: one-line error

err = Console(stderr=True)


# kind -> (module, function) of `pipeline.samples`; each `write(out, n, seed) -> Path`.
SAMPLE_KINDS = {
    "skin": ("pipeline.samples.skin", "write_sample_dataset"),
    "xray": ("pipeline.samples.xray", "write_xray"),
    "brain-mri": ("pipeline.samples.brain_mri", "write_brain_mri"),
    "dicom": ("pipeline.samples.dicom", "write_dicom"),
}


def register_sample_data(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "sample-data", help="write synthetic data in one of the seeds' layouts"
    )
    cmd.add_argument(
        "--kind", choices=SAMPLE_KINDS, default="skin",
        help="skin: Hugging Face Parquet; xray: PNGs + ChestX-ray14 CSV; brain-mri: BraTS "
        "NIfTI cases + labels CSV; dicom: CT and MR series",
    )  # fmt: skip
    cmd.add_argument("--out", type=Path, required=True, help="folder to write")
    cmd.add_argument("--n", type=int, default=200, help="number of images (cases for brain-mri)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.set_defaults(run=_sample_data)


def _sample_data(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise SystemExit("medindex sample-data: error: --n must be at least 1")
    module, function = SAMPLE_KINDS[args.kind]
    try:
        out = getattr(importlib.import_module(module), function)(args.out, args.n, args.seed)
    except ValueError as exc:  # a size the layout cannot take (dicom: at least 5 files)
        raise SystemExit(f"medindex sample-data: error: {exc}") from exc
    err.print(f"wrote {args.kind} sample data ({args.n}) to {out}")
    return 0


def register_make_model(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "make-model",
        help="save a randomly initialised model offline: ViT-S/16 (dino-vits16's shape) or "
        "ResNet-50 (microsoft/resnet-50's)",
    )
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--arch", choices=("vit", "resnet50"), default="vit")
    cmd.add_argument("--layers", type=int, default=12, help="vit: layers (12 = ViT-S)")
    cmd.set_defaults(run=_make_model)


def _make_model(args: argparse.Namespace) -> int:
    from pipeline.random_models import build_random_resnet50, build_random_vit  # torch

    if args.arch == "resnet50":
        build_random_resnet50(args.out)
        err.print(f"saved a random ResNet-50 (2048-d, pooling: pooler) to {args.out}")
        return 0
    build_random_vit(args.out, num_layers=args.layers)
    err.print(f"saved a random ViT ({args.layers} layers, 384-d) to {args.out}")
    return 0


def register_ingest(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("ingest", help="index a dataset through the running pipeline")
    _source_arguments(cmd)
    cmd.add_argument("--collection", default=None, help="default: MEDINDEX_COLLECTION")
    cmd.add_argument("--job-id", default=None, help="a new id, or a known one to resume")
    cmd.add_argument(
        "--resume", action="store_true", help="continue the last unfinished job of this dataset"
    )
    _follow_arguments(cmd)
    cmd.set_defaults(run=_ingest)


def _ingest(args: argparse.Namespace) -> int:
    from producers.ingest import IngestRequest, start_ingest  # datasets, qdrant-client: slow

    settings = get_settings()
    request = IngestRequest(
        dataset=args.dataset,
        collection=args.collection or settings.collection,
        split=args.split,
        model=args.model,
        source_name=args.source_name,
        job_id=args.job_id,
        resume=args.resume,
        pooling=args.pooling,
        **_read_arguments(args),
    )
    started = time.monotonic()
    job_id, total, enqueued = start_ingest(request, settings)
    size, collection = settings.job_size, request.collection
    err.print(f"job {job_id}: {total} images, {enqueued} jobs of {size} queued -> {collection}")
    return _follow(job_id, total, started, args)


def register_retry(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "retry", help="send a job's failed images again (parked points, fixed images)"
    )
    cmd.add_argument("job_id")
    _follow_arguments(cmd)
    cmd.set_defaults(run=_retry)


def _retry(args: argparse.Namespace) -> int:
    from producers.ingest import retry_failed  # datasets, qdrant-client: slow to import

    settings = get_settings()
    started = time.monotonic()
    images, points = retry_failed(args.job_id, settings)
    err.print(f"job {args.job_id}: {images} images to embed again, {points} parked points resent")
    progress = JobTracker(connect_redis(settings.broker_url)).progress(args.job_id)
    if progress.cancelled:
        skipped = progress.total - progress.done - progress.retrying
        err.print(
            f"job {args.job_id} stays cancelled: only its failed images were sent again; the "
            f"{skipped} its cancel skipped stay pending (`medindex ingest --job-id` resumes them)"
        )
    return _follow(args.job_id, progress.total, started, args, retry=True)


def _follow_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--no-wait", action="store_true", help="enqueue and return")
    cmd.add_argument("--timeout", type=float, default=None, help="stop waiting after SECONDS")
    cmd.add_argument("--json", action="store_true", help="last line: a JSON summary")


def _follow(
    job_id: str, total: int, started: float, args: argparse.Namespace, retry: bool = False
) -> int:
    """Show a job's progress until it ends; exit 0 only when every image is indexed or failed
    (a retry of a cancelled job: every image it sent again)."""
    from producers.ingest import wait

    if args.no_wait:
        print(json.dumps({"job_id": job_id, "images": total}) if args.json else job_id)
        return 0
    settings = get_settings()
    tracker = JobTracker(connect_redis(settings.broker_url))
    with _progress_bar() as bar:
        task = bar.add_task(f"job {job_id}", total=total, embedded=0)

        def show(progress: Progress) -> None:
            bar.update(task, completed=progress.done, embedded=progress.embedded)

        try:
            final = wait(tracker, job_id, show, timeout_s=args.timeout, settings=settings)
        except KeyboardInterrupt:
            err.print(f"stopped waiting; job {job_id} goes on: `medindex report {job_id}`")
            return 130
    seconds = time.monotonic() - started
    rate = final.indexed / seconds if seconds else 0.0
    err.print(
        f"job {job_id}: {final.indexed} indexed, {final.failed} failed of {final.total} "
        f"in {seconds:.1f}s ({rate:.1f} images/s)"
        + (f"; details: medindex report {job_id}" if final.failed else "")
    )
    if args.json:
        summary = {
            "job_id": job_id,
            "indexed": final.indexed,
            "failed": final.failed,
            "seconds": round(seconds, 3),
        }
        print(json.dumps(summary))
    if final.cancelled:
        err.print(f"job {job_id} was cancelled")
    return 0 if final.done >= final.total or (retry and final.finished) else 1


class RateColumn(ProgressColumn):
    def render(self, task: object) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:.1f} images/s")


def _progress_bar() -> ProgressBar:
    return ProgressBar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("indexed ({task.fields[embedded]} embedded)"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )


def register_report(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("report", help="a job's progress and each failed image's reason")
    cmd.add_argument("job_id")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    progress = tracker.progress(args.job_id)
    failures = tracker.failures(args.job_id)
    if args.json:
        summary = {
            "job_id": args.job_id,
            "total": progress.total,
            "embedded": progress.embedded,
            "indexed": progress.indexed,
            "failed": progress.failed,
            "resent_after_stall": progress.resent,
            "failures": failures,
            **progress.meta,
        }
        print(json.dumps(summary))
        return 0
    out = Console()
    out.print(
        f"job {args.job_id} -> {progress.meta.get('collection')}: {progress.indexed} indexed "
        f"({progress.embedded} embedded), "
        f"{progress.failed} failed, {progress.total - progress.done} pending of {progress.total}"
    )
    for failure in failures:
        key = "" if failure["key"] is None else f" {failure['key']}"
        out.print(f"  row {failure['row']}{key}: {failure['reason']}")
    sys.stdout.flush()
    return 0


def register_status(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("status", help="queue depths, live workers, jobs' progress")
    cmd.add_argument("job_id", nargs="?", help="one job (default: the 10 newest)")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    from producers.status import collect

    status = collect(get_settings(), args.job_id)
    if args.json:
        print(json.dumps(status))
        return 0
    out = Console()
    queues = ", ".join(f"{name} {depth}" for name, depth in status["queues"].items())
    out.print(f"queues: {queues}; delivered but unacknowledged: {status['unacked']}")
    out.print(f"workers: {', '.join(status['workers']) or 'none answering'}")
    for job in status["jobs"]:
        eta = "-" if job["eta_s"] is None else f"{job['eta_s']:.0f}s"
        out.print(
            f"job {job['job_id']} -> {job['collection']}: {job['state']}, "
            f"{job['indexed']} indexed, {job['failed']} failed of {job['total']} "
            f"({job['embedded']} embedded), {job['images_per_s']:.1f} images/s, ETA {eta}"
        )
    return 0


def register_cancel(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("cancel", help="stop a job: its queued shards are skipped")
    cmd.add_argument("job_id")
    cmd.set_defaults(run=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    JobTracker(connect_redis(get_settings().broker_url)).cancel(args.job_id)
    err.print(f"job {args.job_id} cancelled; `medindex ingest --job-id {args.job_id}` resumes it")
    return 0


def _source_arguments(cmd: argparse.ArgumentParser) -> None:
    """What to index and with which model: shared by ingest and reindex."""
    cmd.add_argument(
        "--dataset", required=True,
        help="Hugging Face hub id, a local folder, or a table file (CSV, TSV, Parquet)",
    )  # fmt: skip
    cmd.add_argument(
        "--format", default=None, help=f"{', '.join(FORMATS)} (default: detected from --dataset)"
    )
    cmd.add_argument("--split", default="train")
    _schema_arguments(cmd)
    _read_option_arguments(cmd)
    cmd.add_argument("--model", default=None, help="default: MEDINDEX_MODEL")
    cmd.add_argument(
        "--pooling",
        choices=("mean", "cls", "pooler"),
        default=None,
        help="how the model's output becomes one vector (default: the model's own, else mean)",
    )
    cmd.add_argument(
        "--source-name", default=None, help="identity point ids derive from (default: --dataset)"
    )


def _schema_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--label-field", default=None,
        help="the field quality, group-by and colouring use (default: the source's class label)",
    )  # fmt: skip
    cmd.add_argument(
        "--key-column", default=None, help="the column naming each image (default: detected)"
    )
    cmd.add_argument(
        "--index", action="append", default=[], metavar="FIELD:TYPE",
        help="a payload index type for a field, over the detected one (repeatable; TYPE: "
        "keyword, integer, float, datetime, bool)",
    )  # fmt: skip


def _read_option_arguments(cmd: argparse.ArgumentParser) -> None:
    """How readers make pictures; defaults from the settings (MEDINDEX_NIFTI_*, _DICOM_*)."""
    cmd.add_argument("--image-column", default=None, help="hf: image column; table: path column")
    cmd.add_argument("--image-root", default=None, help="table: folder image paths are under")
    cmd.add_argument("--nifti-variant", choices=("slice", "crop"), default=None)
    cmd.add_argument("--nifti-crop-margin", type=int, default=None, help="voxels round a tumour")
    cmd.add_argument(
        "--nifti-unmasked-slices", type=int, default=None, help="slices of a case without mask"
    )
    cmd.add_argument("--labels-csv", default=None, help="nifti: a CSV of case -> tumour class")
    cmd.add_argument("--dicom-unit", choices=("instance", "series"), default=None)
    cmd.add_argument(
        "--dicom-window", choices=("file", "lung", "soft_tissue", "bone", "brain"), default=None
    )
    cmd.add_argument(
        "--no-deidentify", action="store_true",
        help="DICOM: keep identifying tags (default: MEDINDEX_DEIDENTIFY)",
    )  # fmt: skip


def _read_arguments(args: argparse.Namespace) -> dict:
    """The format (detected and said when not given), read options and schema overrides of
    an ingest or reindex: fixed once, carried by every job."""
    from pipeline.sources import detect_format
    from producers.schema import parse_index

    fmt = args.format
    if fmt is None:
        fmt = detect_format(args.dataset)
        err.print(f"format: {fmt} (detected; --format chooses)")
    try:
        options = get_settings().read_options(
            key_column=args.key_column,
            image_column=args.image_column,
            image_root=args.image_root,
            labels_csv=args.labels_csv,
            nifti_variant=args.nifti_variant,
            nifti_crop_margin=args.nifti_crop_margin,
            nifti_unmasked_slices=args.nifti_unmasked_slices,
            dicom_unit=args.dicom_unit,
            dicom_window=args.dicom_window,
            deidentify=False if args.no_deidentify else None,
        )
    except ValidationError as exc:  # a value out of range
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-")
        raise MedindexError(f"{flag}: {error['msg']}") from exc
    return {
        "format": fmt,
        "options": options,
        "label_field": args.label_field,
        "indexes": tuple(parse_index(text) for text in args.index),
    }


def register_reindex(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "reindex", help="build a new version behind an alias, verify it, then switch atomically"
    )
    cmd.add_argument("--alias", required=True, help="the name searches use")
    _source_arguments(cmd)
    cmd.add_argument(
        "--min-quality", type=float, default=None, help="refuse below this k-NN agreement"
    )
    cmd.add_argument(
        "--max-quality-drop",
        type=float,
        default=None,
        help="refuse if this much worse than serving",
    )
    cmd.add_argument("--keep", type=int, default=2, help="old versions to keep (default 2)")
    cmd.add_argument("--json", action="store_true", help="last line: a JSON summary")
    cmd.set_defaults(run=_reindex)


def _reindex(args: argparse.Namespace) -> int:
    from producers.reindex import ReindexRequest, reindex  # datasets, qdrant-client: slow

    request = ReindexRequest(
        alias=args.alias,
        dataset=args.dataset,
        split=args.split,
        model=args.model,
        pooling=args.pooling,
        source_name=args.source_name,
        min_quality=args.min_quality,
        max_quality_drop=args.max_quality_drop,
        keep=args.keep,
        **_read_arguments(args),
    )
    started = time.monotonic()
    with _progress_bar() as bar:
        task = bar.add_task(f"reindex {args.alias}", total=None, embedded=0)

        def show(progress: Progress) -> None:
            bar.update(
                task, total=progress.total, completed=progress.done, embedded=progress.embedded
            )

        summary = reindex(request, get_settings(), show)
    summary["seconds"] = round(time.monotonic() - started, 1)
    err.print(
        f"{args.alias} -> {summary['collection']} (was {summary['previous']}): "
        f"{summary['indexed']} indexed, {summary['failed']} failed, "
        + summary.get(
            "quality_note",
            f"quality {summary['quality']} (was {summary['previous_quality']})",
        )
        + f", {summary['seconds']}s"
        + (f"; deleted {', '.join(summary['deleted'])}" if summary["deleted"] else "")
        + (f"; abandoned {summary['abandoned']}" if "abandoned" in summary else "")
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def register_rollback(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("rollback", help="point an alias back at its previous version")
    cmd.add_argument("--alias", required=True)
    cmd.set_defaults(run=_rollback)


def _rollback(args: argparse.Namespace) -> int:
    from pipeline.store import open_store
    from producers.reindex import rollback

    was, now = rollback(open_store(get_settings()), args.alias)
    err.print(f"{args.alias} -> {now} (was {was})")
    return 0


def register_collections(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("collections", help="collections and versions, with what made them")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_collections)


def _collections(args: argparse.Namespace) -> int:
    from pipeline.catalog import collection_rows
    from pipeline.store import open_store

    rows = collection_rows(open_store(get_settings()))
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows]))
        return 0
    table = Table("collection", "serving as", "points", "model", "dataset", "quality", "created")
    for row in rows:
        created = row.created_at and time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created_at))
        table.add_row(
            row.collection, row.alias or "", str(row.points), str(row.model),
            str(row.dataset), str(row.quality), created or "",
        )  # fmt: skip
    Console(width=200).print(table)
    return 0


def register_bench(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "bench", help="pipeline vs the seed's loop vs the model and orchestration ceilings"
    )
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
    edge, local = writes["edge"], writes["local_mode"]
    out.print(
        f"embedded store, 1,000-point writes: Qdrant Edge {edge:.0f} points/s, "
        f"qdrant-client local mode {local:.0f} ({edge / local:.1f}x)"
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
