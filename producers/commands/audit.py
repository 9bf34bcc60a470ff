"""`audit`: duplicates, leaks, label conflicts and outliers of a collection (producers.audit)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.settings import get_settings
from producers.commands import err
from producers.commands.follow import progress_bar


def register_audit(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--collection", default=None, help="default: MEDINDEX_COLLECTION")
    cmd.add_argument("--out", type=Path, default=None, help="folder for the CSVs, summary, PNG")
    cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
    cmd.add_argument("--job-id", default=None, help="a known audit's id: resume it")
    cmd.add_argument("--k", type=_positive, default=5, help="nearest neighbours per point")
    cmd.add_argument(
        "--embedding-threshold", type=float, default=None,
        help="cosine from which two images are near duplicates (default: from the "
        "collection's nearest-neighbour distribution)",
    )  # fmt: skip
    cmd.add_argument(
        "--phash-distance", type=int, default=3, help="pHash bits that may differ (0-3)"
    )
    cmd.add_argument(
        "--phash256-distance", type=int, default=16,
        help="bits of the finer 256-bit pHash that may differ for a 64-bit match to count",
    )  # fmt: skip
    cmd.add_argument(
        "--outlier-threshold", type=float, default=None,
        help="nearest-neighbour cosine below which an image is an outlier (default: from the "
        "distribution)",
    )  # fmt: skip
    cmd.add_argument("--patient-field", default=None, help="default: patient, patient_id, ...")
    cmd.add_argument(
        "--group-field", default=None,
        help="images that belong together, never duplicates (default: lesion_id, patient_id, ...)",
    )  # fmt: skip
    cmd.add_argument("--shard-size", type=_positive, default=64, help="points per shard")
    cmd.add_argument(
        "--beam", type=_positive, default=100,
        help="HNSW beam of the neighbour searches: wider is slower and misses fewer neighbours",
    )  # fmt: skip
    cmd.add_argument(
        "--incremental", action="store_true",
        help="query only the points the last audit has not seen, and add them to it",
    )  # fmt: skip
    cmd.set_defaults(run=_audit)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _audit(args: argparse.Namespace) -> int:
    from producers.audit import AuditRequest, run_audit  # celery, qdrant-client: slow

    settings = get_settings()
    request = AuditRequest(
        collection=args.collection or settings.collection,
        out=args.out,
        job_id=args.job_id,
        k=args.k,
        embedding_threshold=args.embedding_threshold,
        phash_distance=args.phash_distance,
        fine_distance=args.phash256_distance,
        outlier_threshold=args.outlier_threshold,
        patient_field=args.patient_field,
        group_field=args.group_field,
        shard_size=args.shard_size,
        beam=args.beam,
        incremental=args.incremental,
    )
    with progress_bar(f"audit of {request.collection}", None) as show:
        report = run_audit(request, settings, show)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "histogram"}))
    else:
        print(describe(report))
    if args.out:
        err.print(f"wrote {', '.join(report['files'])} to {args.out}")
    return 0


def audit_after_ingest(collection: str) -> None:
    """`medindex ingest --audit`: the new points checked against the collection and added to
    its last audit (a whole audit when there is none); the summary on stderr."""
    from producers.audit import AuditRequest, run_audit

    request = AuditRequest(collection=collection, incremental=True)
    with progress_bar(f"audit of {collection}", None) as show:
        report = run_audit(request, get_settings(), show)
    err.print(describe(report))


def describe(report: dict) -> str:
    """The summary in a few lines, for people."""
    counts, limits = report["counts"], report["thresholds"]
    tiers = ", ".join(f"{n} {tier}" for tier, n in counts["pairs_by_tier"].items())
    return "\n".join(
        [
            f"audit {report['job_id']} of {report['collection']}: {report['points_audited']} "
            f"points ({report['points_queried']} queried) in {report['runtime_s']}s",
            f"  duplicate clusters: {counts['duplicate_clusters']} "
            f"({counts['redundant_images']} redundant images); duplicate pairs: {tiers}",
            f"  leaks: {counts['image_leaks_across_splits']} images across splits, "
            f"{counts['patients_across_splits']} patients across splits, "
            f"{counts['images_across_patients']} images under two patients",
            f"  label conflicts: {counts['label_conflicts']}; adjacent slices (apart): "
            f"{counts['adjacent_slices']}; outliers: {counts['outliers']}",
            f"  thresholds: embedding cosine >= {limits['embedding_cosine']} "
            f"({limits['sources']['embedding']}); pHash distance <= {limits['phash_distance']}; "
            f"outlier cosine < {limits['outlier_cosine']}",
        ]
    )
