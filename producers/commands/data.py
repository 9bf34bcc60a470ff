"""Offline data and models: `sample-data`, `make-model`."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from producers.commands import err

# kind -> (module, function) of `pipeline.samples`; each `write(out, n, seed) -> Path`.
SAMPLE_KINDS = {
    "skin": ("pipeline.samples.skin", "write_sample_dataset"),
    "xray": ("pipeline.samples.xray", "write_xray"),
    "brain-mri": ("pipeline.samples.brain_mri", "write_brain_mri"),
    "dicom": ("pipeline.samples.dicom", "write_dicom"),
}


def register_sample_data(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--kind", choices=SAMPLE_KINDS, default="skin",
        help="skin: Hugging Face Parquet; xray: PNGs + ChestX-ray14 CSV; brain-mri: BraTS "
        "NIfTI cases + labels CSV; dicom: CT and MR series",
    )  # fmt: skip
    cmd.add_argument("--out", type=Path, required=True, help="folder to write")
    cmd.add_argument("--n", type=int, default=200, help="number of images (cases for brain-mri)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.set_defaults(run=_sample_data)


def _sample_data(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise SystemExit("medindex sample-data: error: --n must be at least 1")
    module, function = SAMPLE_KINDS[args.kind]
    try:
        out = getattr(importlib.import_module(module), function)(args.out, args.n, args.seed)
    except ValueError as exc:  # a size the layout cannot take (dicom: at least 5 files)
        raise SystemExit(f"medindex sample-data: error: {exc}") from exc
    err.print(f"wrote {args.kind} sample data ({args.n}) to {out}")
    return 0


def register_make_model(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--arch", choices=("vit", "resnet50"), default="vit")
    cmd.add_argument("--layers", type=int, default=12, help="vit: layers (12 = ViT-S)")
    cmd.set_defaults(run=_make_model)


def _make_model(args: argparse.Namespace) -> int:
    from pipeline.random_models import build_random_resnet50, build_random_vit  # torch

    if args.arch == "resnet50":
        build_random_resnet50(args.out)
        err.print(f"saved a random ResNet-50 (2048-d, pooling: pooler) to {args.out}")
        return 0
    build_random_vit(args.out, num_layers=args.layers)
    err.print(f"saved a random ViT ({args.layers} layers, 384-d) to {args.out}")
    return 0
