"""The mapper: one job's row references in, its points (and its failed images) out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.images import ImageError
from pipeline.model import Embedder, TrivialEmbedder
from pipeline.picture import to_picture
from pipeline.schemas import EmbedJob, PointBatch, point_id
from pipeline.settings import Settings
from pipeline.sources import open_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedResult:
    batch: PointBatch
    failures: list[dict]  # {"row", "key", "reason"}


def embed_job(
    job: EmbedJob, embedder: Embedder | TrivialEmbedder, settings: Settings
) -> EmbedResult:
    """Read, decode and embed a job's rows; a bad image fails alone with its reason."""
    source = open_source(job.source)
    images, ids, rows, payloads, failures = [], [], [], [], []
    for record in source.read(job.rows, settings.max_image_bytes):
        try:
            if record.refusal:
                raise ImageError(record.refusal)
            image = (
                to_picture(record, settings, embedder.draft_size) if embedder.needs_pixels else None
            )
        except ImageError as exc:
            failures.append({"row": record.row, "key": record.key, "reason": str(exc)})
            continue
        images.append(image)
        ids.append(point_id(job.source.identity, job.source.split, record.key))
        rows.append(record.row)
        payloads.append(record.payload)
    vectors = embedder.embed(images)
    for failure in failures:
        log.warning("row %s (%s) refused: %s", failure["row"], failure["key"], failure["reason"])
    return EmbedResult(PointBatch.build(job, ids, rows, payloads, vectors), failures)
