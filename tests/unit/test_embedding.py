"""The seed's embedding, faithfully: mean of last_hidden_state over all tokens, float32."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoImageProcessor, ViTModel

from pipeline.embedder import Embedder
from pipeline.images import decode_rgb
from pipeline.model_info import describe
from pipeline.quality import embedding_parity
from pipeline.schemas import point_id


def test_embedder_matches_the_notebooks_code(tiny_model: Path, dataset: Path) -> None:
    images = list(datasets.load_dataset(str(dataset), split="train").select(range(4))["image"])
    processor = AutoImageProcessor.from_pretrained(tiny_model)
    model = ViTModel.from_pretrained(tiny_model).eval()
    with torch.no_grad():  # the notebook's get_embeddings, line for line
        inputs = processor(images=images, return_tensors="pt")
        expected = model(**inputs).last_hidden_state.mean(dim=1).cpu().numpy()
    got = Embedder(str(tiny_model), "cpu").embed(images)
    assert got.dtype == np.float32 and got.shape == (4, 384)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    recorded = describe(str(tiny_model), "mean")
    assert recorded["dim"] == 384 and recorded["pooling"] == "mean"
    assert recorded["processor"].startswith("ViTImageProcessor")
    assert recorded["preprocessing"] == "exact"


def test_point_ids_are_deterministic_per_source_split_and_key() -> None:
    key = "ISIC_0024329"
    assert point_id("marmal88/skin_cancer", "train", key) == point_id(
        "marmal88/skin_cancer", "train", key
    )
    assert point_id("marmal88/skin_cancer", "train", key) != point_id("other", "train", key)
    assert point_id("marmal88/skin_cancer", "train", key) != point_id(
        "marmal88/skin_cancer", "test", key
    )


def test_resnet_style_models_use_their_pooled_output(tmp_path: Path, dataset: Path) -> None:
    """The registry's ResNet-50 entry: pooler output (global average pool), flattened."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    ResNetModel(config).save_pretrained(tmp_path)
    ConvNextImageProcessor(size={"shortest_edge": 64}).save_pretrained(tmp_path)
    images = list(datasets.load_dataset(str(dataset), split="train").select(range(2))["image"])
    vectors = Embedder(str(tmp_path), "cpu", pooling="pooler").embed(images)
    assert vectors.shape == (2, 32) and np.isfinite(vectors).all()
    assert describe(str(tmp_path), "pooler")["dim"] == 32


def test_fast_preprocessing_keeps_parity_with_the_exact_path(
    tiny_model: Path, dataset: Path
) -> None:
    """The fast path (reduced-size JPEG decode, batched resize + normalise) against the
    reference (full decode + ViTImageProcessor), on the same 600x450 JPEGs."""
    table = datasets.load_dataset(str(dataset), split="train").select(range(64))
    undecoded = table.cast_column("image", datasets.Image(decode=False))
    jpegs = [image["bytes"] for image in undecoded["image"]]
    limits = {"max_pixels": 50_000_000, "max_bytes": 32 * 2**20}
    exact = Embedder(str(tiny_model), "cpu", preprocessing="exact")
    fast = Embedder(str(tiny_model), "cpu", preprocessing="fast")
    assert fast.draft_size == (224, 224) and exact.draft_size is None
    reference = exact.embed([decode_rgb(jpeg, **limits) for jpeg in jpegs])
    quick = fast.embed([decode_rgb(jpeg, **limits, draft_size=fast.draft_size) for jpeg in jpegs])
    parity = embedding_parity(reference, quick)
    assert parity["mean_cosine"] >= 0.995, parity
    assert parity["top10_overlap"] >= 0.8, parity
