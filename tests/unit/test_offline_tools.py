"""Offline tools of the producer side: `medindex make-model --arch resnet50` (MedSearch's
X-ray architecture) and `medindex sample-data --kind`."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from support import assert_one_line_error, sample_dataset

from pipeline.embedder import Embedder
from pipeline.model_info import describe
from pipeline.samples import write_sample_dataset
from producers.harness import run_medindex


def test_a_random_resnet50_embeds_pooled_2048_d_vectors(tmp_path: Path) -> None:
    out = tmp_path / "resnet50"
    result = run_medindex(
        "make-model", "--arch", "resnet50", "--out", str(out), env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
    recorded = describe(str(out), "pooler")
    assert recorded["dim"] == 2048 and recorded["processor"].startswith("ConvNextImageProcessor")
    xray = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260), np.uint8))
    vectors = Embedder(str(out), "cpu", "pooler").embed([xray.convert("RGB")] * 2)
    assert vectors.shape == (2, 2048) and np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5)


def test_sample_data_writes_the_kind_asked_for(tmp_path: Path) -> None:
    env = dict(os.environ)
    result = run_medindex(
        "sample-data", "--kind", "skin", "--out", str(tmp_path / "skin"), "--n", "12", env=env
    )
    assert result.returncode == 0, result.stderr
    assert datasets.load_dataset(str(tmp_path / "skin"), split="train").num_rows == 12
    unknown = run_medindex("sample-data", "--kind", "ultrasound", "--out", str(tmp_path), env=env)
    assert_one_line_error(unknown, "--kind", "ultrasound")
    too_few = run_medindex(
        "sample-data", "--kind", "dicom", "--out", str(tmp_path / "d"), "--n", "2", env=env
    )
    assert_one_line_error(too_few, "at least")
    kinds = {
        "xray": "Data_Entry_2017.csv",
        "brain-mri": "labels.csv",
        "dicom": "*/*/*/IM_*.dcm",
    }
    for kind, written in kinds.items():
        out = tmp_path / kind
        result = run_medindex("sample-data", "--kind", kind, "--out", str(out), "--n", "6", env=env)
        assert result.returncode == 0, result.stderr
        assert list(out.glob(written)), f"{kind}: no {written} in {out}"


def test_the_tests_kept_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    """`support.sample_dataset` copies a rendering kept across test processes; it must be the
    generator's own output, and a second copy a file of its own."""
    written = write_sample_dataset(tmp_path / "written", 12, seed=5)
    first = sample_dataset(tmp_path / "first", 12, seed=5)
    second = sample_dataset(tmp_path / "second", 12, seed=5)
    tables = [datasets.load_dataset(str(d), split="train") for d in (written, first, second)]
    assert tables[0].to_list() == tables[1].to_list() == tables[2].to_list()
    files = [d / "data" / "train-00000-of-00001.parquet" for d in (first, second)]
    assert not files[0].samefile(files[1])
