"""Issue 17: several jobs embedded in one forward pass, their decoding overlapped with the model;
half precision's vectors against float32's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pytest
from support import N_IMAGES

from pipeline.embed import embed_job, embed_jobs
from pipeline.embedder import DeviceJpeg, Embedder, Kernels
from pipeline.images import decode_rgb
from pipeline.model_info import ModelError
from pipeline.quality import embedding_parity
from pipeline.schemas import EmbedJob
from pipeline.settings import get_settings
from pipeline.sources import resolve


def test_fused_passes_give_each_job_the_points_it_gets_alone(
    tiny_model: Path, dataset: Path
) -> None:
    """Ten 16-image jobs in passes of 64 (decoded on three threads), and a job whose rows are
    gone: each job gets its own points, the vectors it gets when embedded alone, and the job
    that cannot be read fails alone."""
    ref, settings = resolve(str(dataset)), get_settings()
    embedder = Embedder(str(tiny_model), "cpu", preprocessing="fast")

    def job(rows: range) -> EmbedJob:
        return EmbedJob(job_id="fused", collection="fused", source=ref, model=str(tiny_model),
                        rows=list(rows))  # fmt: skip

    jobs = [job(range(start, start + 16)) for start in range(0, 160, 16)]
    gone = job(range(N_IMAGES - 8, N_IMAGES + 8))
    jobs.insert(3, gone)
    with ThreadPoolExecutor(3) as decoder:
        fused = list(embed_jobs(jobs, embedder, settings, 64, decoder))
    assert sorted(id(j) for j, _ in fused) == sorted(id(j) for j in jobs)  # each job once
    outcomes = {id(j): outcome for j, outcome in fused}
    assert isinstance(outcomes[id(gone)], IndexError)
    for one in jobs:
        if one is gone:
            continue
        alone, got = embed_job(one, embedder, settings), outcomes[id(one)]
        assert got.batch.rows == alone.batch.rows == one.rows
        assert got.batch.ids == alone.batch.ids and got.failures == alone.failures == []
        np.testing.assert_allclose(got.batch.matrix(), alone.batch.matrix(), rtol=1e-4, atol=1e-5)


def test_bf16_vectors_keep_parity_with_float32_on_cpu(tiny_model: Path, dataset: Path) -> None:
    """The thresholds the bench holds half precision to on a GPU, here with CPU autocast."""
    table = datasets.load_dataset(str(dataset), split="train").select(range(128))
    jpegs = [i["bytes"] for i in table.cast_column("image", datasets.Image(decode=False))["image"]]
    exact = Embedder(str(tiny_model), "cpu", preprocessing="fast")
    half = Embedder(str(tiny_model), "cpu", preprocessing="fast", kernels=Kernels("bf16"))
    assert half.half is not None and exact.half is None  # "auto" is float32 on CPU
    pictures = [decode_rgb(jpeg, 50_000_000, 2**25, exact.draft_size) for jpeg in jpegs]
    reference, candidate = exact.embed(pictures), half.embed(pictures)
    assert candidate.dtype == np.float32 and candidate.shape == reference.shape
    assert not np.array_equal(candidate, reference)  # the pass really ran in bf16
    parity = embedding_parity(reference, candidate)
    assert parity["mean_cosine"] >= 0.999 and parity["top10_overlap"] >= 0.95, parity


def test_gpu_jpeg_decoding_without_its_extra_is_a_one_line_error() -> None:
    """torchvision is an optional extra, imported only when MEDINDEX_GPU_DECODE asks for it."""
    with pytest.raises(ModelError, match="MEDINDEX_GPU_DECODE needs torchvision") as refused:
        DeviceJpeg("cuda")
    assert "\n" not in str(refused.value)
