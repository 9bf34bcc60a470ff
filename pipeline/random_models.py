"""Models for offline runs (`medindex make-model`): the seed's and MedSearch's architectures
with random weights, saved as transformers saves a downloaded model. Same shapes and
preprocessing, so the cost per image is the real one; the neighbours they find mean nothing."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

from pipeline.embedder import quiet_transformers

quiet_transformers()

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Written into the model's config.json: what made a collection's vectors says so on the page
# (pipeline.model_info.random_weights). transformers keeps unknown config keys as they are.
RANDOM_MARK = {"medindex_random_weights": True}


def build_random_vit(out_dir: Path, num_layers: int = 12, seed: int = 0) -> Path:
    """Save a ViT-S/16 of dino-vits16's exact shape with random weights."""
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=num_layers,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
        qkv_bias=True,
        **RANDOM_MARK,
    )
    # Imported here: without torchvision, transformers warns on importing a processor.
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


def build_random_resnet50(out_dir: Path, seed: int = 0) -> Path:
    """Save a ResNet-50 of microsoft/resnet-50's shape (the architecture MedSearch embedded
    X-rays with) with random weights, and its cropping processor; pooled 2048-d."""
    from transformers import ConvNextImageProcessor  # warns too, as above

    torch.manual_seed(seed)
    ResNetModel(ResNetConfig(**RANDOM_MARK)).save_pretrained(out_dir)  # defaults: ResNet-50's
    ConvNextImageProcessor(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=Image.Resampling.BILINEAR,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out_dir)
    return out_dir
