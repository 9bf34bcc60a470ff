"""An audit's findings written out: pairs.csv, clusters.csv, leaks.csv, keep.csv,
summary.json and the nearest-neighbour histogram (PNG, with the thresholds marked)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from pipeline.audit import Findings

if TYPE_CHECKING:
    from redis import Redis

PAIR_COLUMNS = (
    "key_a", "key_b", "point_a", "point_b", "tier", "similarity",
    "cross_split", "cross_patient", "label_conflict", "cluster", "same_volume",
)  # fmt: skip
HISTOGRAM = "nn_histogram.png"
REPORT_KEY = "medindex:audit:report:"
PAGE_PAIRS = 500  # pairs the page's galleries get; pairs.csv holds all


def summary(findings: Findings, collection: str, runtime_s: float, job_id: str) -> dict:
    limits = findings.thresholds
    return {
        "collection": collection,
        "job_id": job_id,
        "points_audited": len(findings.points),
        "runtime_s": round(runtime_s, 2),
        "thresholds": {
            "embedding_cosine": limits.embedding,
            "phash_distance": limits.phash_distance,
            "outlier_cosine": limits.outlier,
            "sources": limits.sources,
        },
        "counts": findings.counts,
        "histogram": histogram_data(findings),
        "files": ["pairs.csv", "clusters.csv", "leaks.csv", "keep.csv", "summary.json", HISTOGRAM],
    }


def histogram_data(findings: Findings, bins: int = 40) -> dict:
    nn = [p.nn[0] for p in findings.points if p.nn]
    # From a little below the lowest value or threshold: a collection whose neighbours all lie
    # within 0.99-1 shows its shape, not one bar at the right end.
    low = min([*nn, findings.thresholds.outlier])
    low = max(-1.0, low - 0.05 * max(1.0 - low, 1e-3))
    counts, edges = np.histogram(nn, bins=bins, range=(low, 1.0))
    return {"counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges]}


def write_report(findings: Findings, report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "pairs.csv", PAIR_COLUMNS, _pair_rows(findings))
    _write(
        out / "clusters.csv",
        ("cluster", "size", "tiers", "min_similarity", "min_pairwise_cosine", "keys", "points"),
        [
            (c.id, len(c.members), "|".join(c.tiers), c.min_edge_similarity, c.min_cosine,
             "|".join(m.key for m in c.members), "|".join(m.id for m in c.members))
            for c in findings.clusters
        ],
    )  # fmt: skip
    _write(
        out / "leaks.csv",
        ("kind", "patient", "splits", "key_a", "key_b", "split_a", "split_b", "tier", "similarity"),
        _leak_rows(findings),
    )
    _write(
        out / "keep.csv",
        ("key", "point", "split", "keep", "proposed_split", "reason"),
        [(p.key, p.id, p.split, _bool(kept), split, why) for p, kept, split, why in findings.keep],
    )
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    draw_histogram(report["histogram"], findings.thresholds).save(out / HISTOGRAM)


def keep_report(redis: Redis, collection: str, report: dict, pairs: list[dict]) -> None:
    """The collection's last audit, for the page: its summary and its first pairs."""
    redis.set(REPORT_KEY + collection, json.dumps({**report, "pairs": pairs[:PAGE_PAIRS]}))


def last_report(redis: Redis, collection: str) -> dict | None:
    raw = redis.get(REPORT_KEY + collection)
    return json.loads(raw) if raw else None


def pair_records(findings: Findings) -> list[dict]:
    """pairs.csv's rows as dicts (the page's galleries)."""
    return [dict(zip(PAIR_COLUMNS, row, strict=True)) for row in _pair_rows(findings)]


def _pair_rows(findings: Findings) -> list[tuple]:
    return [
        (p.a.key, p.b.key, p.a.id, p.b.id, p.tier, p.similarity, _bool(p.cross_split),
         _bool(p.cross_patient), p.label_distance, p.cluster or "", _bool(p.same_volume))
        for p in findings.pairs
    ]  # fmt: skip


def _leak_rows(findings: Findings) -> list[tuple]:
    rows: list[tuple] = [
        ("patient", patient, "|".join(splits), "", "", "", "", "", "")
        for patient, splits in findings.patient_leaks.items()
    ]
    rows += [
        ("image", p.a.patient or "", f"{p.a.split}|{p.b.split}", p.a.key, p.b.key,
         p.a.split, p.b.split, p.tier, p.similarity)
        for p in findings.pairs
        if p.cross_split and p.cluster is not None
    ]  # fmt: skip
    return rows


def _write(path: Path, header: tuple, rows: list[tuple]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def draw_histogram(data: dict, limits: object, size: tuple[int, int] = (640, 320)) -> Image.Image:
    """Bars of nearest-neighbour cosine similarity; the duplicate threshold in red, the
    outlier threshold in blue."""
    width, height = size
    margin = 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    counts, edges = data["counts"], data["edges"]
    low, high = edges[0], edges[-1]
    top = max(counts) or 1

    def x_of(value: float) -> float:
        return margin + (value - low) / (high - low) * (width - 2 * margin)

    for n, count in enumerate(counts):
        bar = height - margin - count / top * (height - 2 * margin)
        draw.rectangle((x_of(edges[n]), bar, x_of(edges[n + 1]) - 1, height - margin), "#607d8b")
    draw.line((margin, height - margin, width - margin, height - margin), "black")
    for value, colour, name in (
        (limits.embedding, "#d32f2f", "duplicate"),
        (limits.outlier, "#1565c0", "outlier"),
    ):
        if low <= value <= high:
            draw.line((x_of(value), margin, x_of(value), height - margin), colour, 2)
            draw.text((x_of(value) + 3, margin), f"{name} {value:.4f}", fill=colour)
    # Four decimals: a collection's neighbours often all lie within 0.99-1.
    draw.text((margin, height - margin + 6), f"{low:.4f}", fill="black")
    draw.text((width - margin - 36, height - margin + 6), f"{high:.4f}", fill="black")
    draw.text((margin, 8), f"nearest-neighbour cosine similarity (max {top} points)", fill="black")
    return image
