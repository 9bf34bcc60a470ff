"""The mapper: jobs of row references in, their points (and their failed images) out.

Several jobs may share one forward pass (`embed_jobs`): their pictures are read and decoded on
a pool of threads while the model runs on the pass before, then each pass's vectors are split
back into each job's points.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.embedder import Embedder, TrivialEmbedder, is_jpeg
from pipeline.fingerprint import fingerprint
from pipeline.images import ImageError
from pipeline.picture import to_picture
from pipeline.schemas import EmbedJob, PointBatch, point_id
from pipeline.settings import Settings
from pipeline.sources import SourceRow, open_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedResult:
    batch: PointBatch
    failures: list[dict]  # {"row", "key", "reason"}


@dataclass(frozen=True)
class ReadJob:
    """A job's rows read and their pictures made: what its forward pass needs."""

    job: EmbedJob
    pictures: list[Image.Image | np.ndarray | torch.Tensor | None]
    ids: list[str]
    rows: list[int]
    payloads: list[dict]
    failures: list[dict]

    def result(self, vectors: np.ndarray) -> EmbedResult:
        batch = PointBatch.build(self.job, self.ids, self.rows, self.payloads, vectors)
        return EmbedResult(batch, self.failures)


def read_job(job: EmbedJob, embedder: Embedder | TrivialEmbedder, settings: Settings) -> ReadJob:
    """Read and decode a job's rows; a bad image fails alone with its reason."""
    source = open_source(job.source)
    read = ReadJob(job, [], [], [], [], [])
    for record in source.read(job.rows, settings.max_image_bytes):
        payload = record.payload
        try:
            if embedder.needs_pixels:
                picture = _picture(record, embedder, settings)
                # The audit's evidence, made while the bytes are here.
                found = fingerprint(record, settings.max_image_pixels, settings.max_image_bytes)
                payload = {**payload, **found.payload()}
            else:  # the trivial embedder makes its vector of the row's key
                picture = record.key
        except ImageError as exc:
            read.failures.append({"row": record.row, "key": record.key, "reason": str(exc)})
            log.warning("job=%s row %s (%s) refused: %s", job.job_id, record.row, record.key, exc)
            continue
        read.pictures.append(picture)
        read.ids.append(point_id(job.source.identity, job.source.split, record.key))
        read.rows.append(record.row)
        read.payloads.append(payload)
    return read


def _picture(
    record: SourceRow, embedder: Embedder, settings: Settings
) -> Image.Image | np.ndarray | torch.Tensor:
    """The row's picture as far as a decoding thread takes it (resized, on the fast path)."""
    if getattr(embedder, "jpeg_decoder", None) and is_jpeg(record.image) and not record.refusal:
        return embedder.decode_on_device(
            record.image, settings.max_image_pixels, settings.max_image_bytes
        )
    return embedder.prepare(to_picture(record, settings, embedder.draft_size))


def embed_job(
    job: EmbedJob, embedder: Embedder | TrivialEmbedder, settings: Settings
) -> EmbedResult:
    """One job alone, in one pass."""
    read = read_job(job, embedder, settings)
    return read.result(embedder.embed(read.pictures))


def embed_jobs(
    jobs: list[EmbedJob],
    embedder: Embedder | TrivialEmbedder,
    settings: Settings,
    batch_size: int,
    decoder: Executor,
) -> Iterator[tuple[EmbedJob, EmbedResult | Exception]]:
    """Each job's result (or the error that stopped it), in order, as soon as its pass ends.

    Whole jobs are fused into passes of up to `batch_size` pictures. Every job is handed to
    `decoder` at once, so the next jobs are read and decoded while the model runs. A job's own
    read error stops that job only; a pass's error stops the jobs in that pass.
    """
    reads = [decoder.submit(read_job, job, embedder, settings) for job in jobs]
    pending: list[ReadJob] = []
    for job, future in zip(jobs, reads, strict=True):
        try:
            read = future.result()
        except Exception as exc:  # the job's own failure; the task decides what it means
            yield job, exc
            continue
        if pending and sum(len(p.pictures) for p in pending) + len(read.pictures) > batch_size:
            yield from _pass(pending, embedder, batch_size)
            pending = []
        pending.append(read)
    if pending:
        yield from _pass(pending, embedder, batch_size)


def _pass(
    reads: list[ReadJob], embedder: Embedder | TrivialEmbedder, batch_size: int
) -> Iterator[tuple[EmbedJob, EmbedResult | Exception]]:
    """One forward pass over the jobs' pictures (in slices of `batch_size` where one job alone
    is larger), split back into each job's points."""
    pictures = [picture for read in reads for picture in read.pictures]
    try:
        vectors = np.concatenate(
            [
                embedder.embed(pictures[start : start + batch_size])
                for start in range(0, len(pictures), batch_size)
            ]
            or [np.empty((0, embedder.dim), dtype=np.float32)]
        )
    except Exception as exc:  # every job of the pass met it
        for read in reads:
            yield read.job, exc
        return
    start = 0
    for read in reads:
        stop = start + len(read.pictures)
        yield read.job, read.result(vectors[start:stop])
        start = stop
