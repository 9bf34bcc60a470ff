"""The seed's embedding, faithfully: mean of last_hidden_state over all tokens, float32."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoImageProcessor, ViTModel

from pipeline.model import Embedder, describe
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
    assert recorded["preprocessing"].startswith("ViTImageProcessor")


def test_point_ids_are_deterministic_per_source_and_key() -> None:
    assert point_id("marmal88/skin_cancer", "ISIC_0024329") == point_id(
        "marmal88/skin_cancer", "ISIC_0024329"
    )
    assert point_id("marmal88/skin_cancer", "ISIC_0024329") != point_id("other", "ISIC_0024329")


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
