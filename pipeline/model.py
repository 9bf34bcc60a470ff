"""The embedding model: the seed's DINO ViT, mean of last_hidden_state over all tokens."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, ViTConfig, ViTModel

from pipeline.errors import MedindexError, first_line

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ModelError(MedindexError):
    """A model that cannot be loaded; the message is meant for the user, on one line."""


def resolve_device(setting: str) -> str:
    """Only ever called inside a worker process, after the fork: CUDA cannot survive a fork."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class Embedder:
    """Image processor + model, loaded once; `embed` maps RGB pictures to float32 vectors."""

    def __init__(self, model_name: str, device: str = "auto") -> None:
        self.device = resolve_device(device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(model_name)
            self.model = AutoModel.from_pretrained(model_name).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model {model_name!r}: {first_line(exc)}") from exc
        self.dim = hidden_size(self.model.config)
        log.info("loaded model %s on %s (%d-d)", model_name, self.device, self.dim)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        hidden = self.model(**inputs).last_hidden_state
        return hidden.mean(dim=1).float().cpu().numpy()


@cache
def get_embedder(model_name: str, device: str) -> Embedder:
    return Embedder(model_name, device)


def hidden_size(config: object) -> int:
    sizes = getattr(config, "hidden_sizes", None)  # ResNet-like configs
    return int(sizes[-1]) if sizes else int(config.hidden_size)


def vector_size(model_name: str) -> int:
    """The model's output size, read from its config alone (cheap: no weights)."""
    try:
        return hidden_size(AutoConfig.from_pretrained(model_name))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {model_name!r}: {first_line(exc)}") from exc


def build_random_vit(out_dir: Path, num_layers: int = 12, seed: int = 0) -> Path:
    """Save a ViT-S/16 of dino-vits16's exact shape with random weights, for offline runs.

    Same architecture and preprocessing, so the cost per image is the real one; the neighbours
    it finds mean nothing.
    """
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=num_layers,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
        qkv_bias=True,
    )
    # Imported here: without torchvision, transformers warns on this import (see README).
    from transformers import ViTImageProcessor

    ViTModel(config, add_pooling_layer=False).save_pretrained(out_dir)
    ViTImageProcessor(
        do_resize=True,
        size={"height": 224, "width": 224},
        resample=Image.Resampling.BICUBIC,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out_dir)
    return out_dir
