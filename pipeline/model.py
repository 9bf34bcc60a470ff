"""The embedding model: the seed's DINO ViT, mean of last_hidden_state over all tokens."""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, ViTConfig, ViTModel

from pipeline.errors import MedindexError, first_line
from pipeline.settings import PREPROCESSINGS

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ModelError(MedindexError):
    """A model that cannot be loaded; the message is meant for the user, on one line."""


# How each known image model's output becomes one vector. Any other transformers image model
# works too, with the pooling stated (`--pooling`; "mean" when not).
POOLINGS = ("mean", "cls", "pooler")
KNOWN_POOLING = {
    "facebook/dino-vits16": "mean",  # the seed's: mean of last_hidden_state, 384-d
    "facebook/dino-vitb16": "mean",  # 768-d
    "microsoft/resnet-50": "pooler",  # global average pool, 2048-d
}


# Not a model: a stand-in that skips decoding and inference, so that `medindex bench` can
# measure what Redis, Celery and the store move on their own (the orchestration ceiling).
TRIVIAL_MODEL = "medindex/trivial"
TRIVIAL_DIM = 384


class TrivialEmbedder:
    needs_pixels = False
    draft_size = None
    dim = TRIVIAL_DIM

    def embed(self, images: list) -> np.ndarray:
        return np.ones((len(images), self.dim), dtype=np.float32)


def default_pooling(model_name: str) -> str:
    return KNOWN_POOLING.get(model_name, "mean")


def describe(model_name: str, pooling: str, preprocessing: str = "exact") -> dict:
    """What made a collection's vectors, recorded with it: model, revision, pooling,
    preprocessing, image processor and size. Reads configs only (cheap: no weights)."""
    if model_name == TRIVIAL_MODEL:
        return {"model": model_name, "revision": "-", "pooling": pooling,
                "preprocessing": "none", "processor": "none", "dim": TRIVIAL_DIM}  # fmt: skip
    try:
        config = AutoConfig.from_pretrained(model_name)
        processor = AutoImageProcessor.from_pretrained(model_name)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {model_name!r}: {first_line(exc)}") from exc
    return {
        "model": model_name,
        "revision": getattr(config, "_commit_hash", None) or "local",
        "pooling": pooling,
        "preprocessing": preprocessing if fixed_input_size(processor) else "exact",
        "processor": type(processor).__name__,
        "dim": hidden_size(config),
    }


def fixed_input_size(processor: object) -> tuple[int, int] | None:
    """(width, height) when the processor only resizes to a fixed size and normalises (the
    ViT family): what the fast path reproduces. None for crops and shortest-edge resizes."""
    size = getattr(processor, "size", None)
    if isinstance(size, dict):
        width, height = size.get("width"), size.get("height")
    else:  # transformers' SizeDict
        width, height = getattr(size, "width", None), getattr(size, "height", None)
    plain = getattr(processor, "do_resize", False) and getattr(processor, "do_normalize", False)
    if not plain or getattr(processor, "do_center_crop", False) or not (width and height):
        return None
    return int(width), int(height)


def resolve_device(setting: str) -> str:
    """Only ever called inside a worker process, after the fork: CUDA cannot survive a fork."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class Embedder:
    """Image processor + model, loaded once; `embed` maps RGB pictures to float32 vectors."""

    needs_pixels = True

    def __init__(
        self,
        model_name: str,
        device: str = "auto",
        pooling: str = "mean",
        preprocessing: str = "exact",
    ) -> None:
        if pooling not in POOLINGS:
            raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if preprocessing not in PREPROCESSINGS:
            raise ModelError(
                f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, not {preprocessing!r}"
            )
        self.device = resolve_device(device)
        self.pooling = pooling
        try:
            self.processor = AutoImageProcessor.from_pretrained(model_name)
            self.model = AutoModel.from_pretrained(model_name).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model {model_name!r}: {first_line(exc)}") from exc
        self.dim = hidden_size(self.model.config)
        # Where the fast path does not apply (crops), the exact one runs.
        self.draft_size = fixed_input_size(self.processor) if preprocessing == "fast" else None
        log.info(
            "loaded model %s on %s (%d-d, %s preprocessing)",
            model_name, self.device, self.dim, "fast" if self.draft_size else "exact",
        )  # fmt: skip

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        output = self.model(pixel_values=self.pixels(images).to(self.device))
        if self.pooling == "pooler":
            pooled = output.pooler_output.flatten(start_dim=1)
        elif self.pooling == "cls":
            pooled = output.last_hidden_state[:, 0]
        else:
            pooled = output.last_hidden_state.mean(dim=1)
        return pooled.float().cpu().numpy()

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's input for a batch of pictures, by the configured path."""
        if self.draft_size:
            return self._fast_pixels(images)
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def _fast_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The processor's resize (same filter) and normalisation, done once for the batch."""
        processor = self.processor
        resized = [image.resize(self.draft_size, processor.resample) for image in images]
        batch = torch.from_numpy(np.stack([np.asarray(image) for image in resized]))
        pixels = batch.permute(0, 3, 1, 2).float().mul_(processor.rescale_factor)
        mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        return (pixels - mean) / std


@cache
def get_embedder(
    model_name: str, device: str, pooling: str = "mean", preprocessing: str = "exact"
) -> Embedder | TrivialEmbedder:
    if model_name == TRIVIAL_MODEL:
        return TrivialEmbedder()
    return Embedder(model_name, device, pooling, preprocessing)


def hidden_size(config: object) -> int:
    sizes = getattr(config, "hidden_sizes", None)  # ResNet-like configs
    return int(sizes[-1]) if sizes else int(config.hidden_size)


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


def share_cpu(processes: int) -> None:
    """Give each of `processes` embed processes its share of the cores, so that they do not
    oversubscribe them (one decodes while another runs the model)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def build_random_resnet50(out_dir: Path, seed: int = 0) -> Path:
    """Save a ResNet-50 of microsoft/resnet-50's shape (the architecture MedSearch embedded
    X-rays with) with random weights, and its cropping processor; pooled 2048-d."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    ResNetModel(ResNetConfig()).save_pretrained(out_dir)  # the defaults are ResNet-50's
    ConvNextImageProcessor(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=Image.Resampling.BILINEAR,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out_dir)
    return out_dir
