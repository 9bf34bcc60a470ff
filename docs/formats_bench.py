"""Per format: images/s through the pipeline, and where a worker's time goes (reading and
decoding the picture versus embedding it). `make bench-formats`; figures in BENCHMARKS.md.

    .venv/bin/python docs/formats_bench.py [--layers 12] [--json]

For each seed's layout (skin: Hugging Face Parquet; xray: PNGs + CSV; brain-mri: NIfTI cases;
dicom: CT/MR series), sample data is written, then:
- in this process, one worker's work on every row: `read` + `to_picture` (the reader and the
  decode, timed alone) and the model's forward pass on the same pictures in jobs of 16;
- through a real stack (`medindex up`: Redis, embed and store workers, the embedded engine),
  `medindex ingest` of the same data, first enqueue to last write.
The model is a locally saved ViT of dino-vits16's shape with random weights (`--layers 12` is
ViT-S/16's full depth); ViT-S cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from pipeline.embedder import get_embedder
from pipeline.model_info import default_pooling
from pipeline.picture import to_picture
from pipeline.random_models import build_random_vit
from pipeline.settings import get_settings
from pipeline.sources import detect_format, open_source, resolve
from pipeline.sources.base import SourceRow
from producers.commands.data import SAMPLE_KINDS
from producers.harness import Result, RunningStack, running_stack

# kind -> (sample size, extra ingest flags); sizes give each layout a few hundred pictures
# or, for NIfTI, cases whose four modalities are read from 3-D volumes.
KINDS = {
    "skin": (320, []),
    "xray": (160, []),
    "brain-mri": (24, ["--labels-csv", "{data}/labels.csv"]),
    "dicom": (160, []),
}
JOB = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="medindex-formats-"))
    env = _environment(home)
    os.environ.update(env)
    model = build_random_vit(home / "vit", num_layers=args.layers)
    rows = []
    with running_stack(dict(os.environ) | env, home / "up.log") as stack:
        for kind, (n, flags) in KINDS.items():
            data = _sample(kind, home / kind, n)
            split = _worker_split(data, str(model))
            flags = [f.format(data=data.parent if data.is_file() else data) for f in flags]
            run = _medindex(stack, "ingest", "--dataset", str(data), "--collection", kind, *flags,
                           "--json")  # fmt: skip
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            rate = summary["indexed"] / summary["seconds"]
            rows.append({"format": kind, "images": summary["indexed"],
                         "pipeline_images_per_s": round(rate, 1)} | split)  # fmt: skip
    for row in rows:
        print(
            f"{row['format']:9} {row['images']:4} images  "
            f"pipeline {row['pipeline_images_per_s']:6.1f} img/s  "
            f"read+decode {row['read_ms']:6.1f} ms/img ({row['read_share']:.0%})"
            f"  embed {row['embed_ms']:6.1f} ms/img"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


def _worker_split(data: Path, model: str) -> dict:
    """One worker's time per picture: reading and decoding it, then embedding it."""
    ref = resolve(str(data), fmt=detect_format(str(data)))
    source = open_source(ref)
    settings_ = get_settings()
    embedder = get_embedder(model, "cpu", default_pooling(model), settings_.preprocessing)
    started = time.perf_counter()
    pictures = []
    for start in range(0, len(source), JOB):
        rows: list[SourceRow] = source.read(
            list(range(start, min(start + JOB, len(source)))), settings_.max_image_bytes
        )
        pictures += [
            to_picture(r, settings_, embedder.draft_size) for r in rows if r.refusal is None
        ]
    read_s = time.perf_counter() - started
    embedder.embed(pictures[:JOB])  # warm up
    started = time.perf_counter()
    for start in range(0, len(pictures), JOB):
        embedder.embed(pictures[start : start + JOB])
    embed_s = time.perf_counter() - started
    return {
        "read_ms": round(1000 * read_s / len(pictures), 2),
        "embed_ms": round(1000 * embed_s / len(pictures), 2),
        "read_share": round(read_s / (read_s + embed_s), 3),
    }


def _environment(home: Path) -> dict[str, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        "MEDINDEX_HOME": str(home / "home"),
        "MEDINDEX_MODEL": str(home / "vit"),
        "MEDINDEX_LOCAL_REDIS_PORT": str(port),
        "MEDINDEX_FLOWER_PORT": "0",
        "MEDINDEX_DEID_KEY": "formats-bench-key",
    }


def _sample(kind: str, out: Path, n: int) -> Path:
    """The sample data `medindex sample-data --kind KIND` writes; the path to ingest."""
    module, function = SAMPLE_KINDS[kind]
    return getattr(importlib.import_module(module), function)(out, n, 1)


def _medindex(stack: RunningStack, *argv: str) -> Result:
    run = stack.medindex(*argv, timeout=3600)
    if run.returncode != 0:
        raise SystemExit(f"medindex {argv[0]} failed: {run.stderr.strip()[-500:]}")
    return run


if __name__ == "__main__":
    sys.exit(main())
