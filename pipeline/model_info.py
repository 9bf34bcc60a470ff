"""What made a collection's vectors, read from the model's two config files alone: no torch,
no transformers, no weights, so that producers and `medindex status` never import them.

A model is a local folder or a hub id (its files from huggingface_hub's cache, downloaded when
missing). The values are those transformers reads from the same files: `describe` records
them with a collection, the embedder (pipeline/embedder.py) runs the model itself.
"""

from __future__ import annotations

import json
import re
import socket
import zlib
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

import numpy as np
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from pipeline.errors import MedindexError, first_line
from pipeline.schemas import Pooling


class ModelError(MedindexError):
    """A model that cannot be loaded; the message is meant for the user, on one line."""


# How each known image model's output becomes one vector. Any other transformers image model
# works too, with the pooling stated (`--pooling`; "mean" when not).
POOLINGS: tuple[str, ...] = get_args(Pooling)
KNOWN_POOLING = {
    "facebook/dino-vits16": "mean",  # the seed's: mean of last_hidden_state, 384-d
    "facebook/dino-vitb16": "mean",  # 768-d
    "microsoft/resnet-50": "pooler",  # global average pool, 2048-d
}

# Not a model: a stand-in that skips decoding and inference, so that `medindex bench` can
# measure what Redis, Celery and the store move on their own (the orchestration ceiling).
TRIVIAL_MODEL = "medindex/trivial"
TRIVIAL_DIM = 384

TRIVIAL_CLUSTERS = 64


def trivial_vectors(keys: list[str], dim: int = TRIVIAL_DIM) -> np.ndarray:
    """A clustered vector per key, the same wherever it is made: a centre picked by the key's
    hash, plus noise of the same scale seeded by it."""
    centres = np.random.default_rng(0).normal(size=(TRIVIAL_CLUSTERS, dim))
    out = np.empty((len(keys), dim), dtype=np.float32)
    for i, key in enumerate(keys):
        seed = zlib.crc32(key.encode())
        out[i] = centres[seed % TRIVIAL_CLUSTERS] + np.random.default_rng(seed).normal(size=dim)
    return out


# The processor known to read a bare number as `size` (older configs) as a square; many others
# (ConvNext, CLIP, BiT) read it as the shortest edge, so any other's bare size is recorded as
# one the fast path cannot reproduce: exact preprocessing.
SQUARE_SIZED = "ViTImageProcessor"
COMMIT_FOLDER = re.compile(r"snapshots/([0-9a-f]{40})/")  # huggingface_hub's cache layout


def default_pooling(model_name: str) -> str:
    return KNOWN_POOLING.get(model_name, "mean")


def describe(model_name: str, pooling: str, preprocessing: str = "exact") -> dict:
    """What made a collection's vectors, recorded with it: model, revision, pooling,
    preprocessing, image processor and size."""
    if model_name == TRIVIAL_MODEL:
        return {"model": model_name, "revision": "-", "pooling": pooling,
                "preprocessing": "none", "processor": "none", "dim": TRIVIAL_DIM}  # fmt: skip
    try:
        config_file = model_file(model_name, "config.json")
        config = json.loads(config_file.read_text())
        processor = json.loads(model_file(model_name, "preprocessor_config.json").read_text())
        return {
            "model": model_name,
            "revision": commit_of(config_file) or "local",
            "pooling": pooling,
            "preprocessing": preprocessing if fixed_input_size(processor) else "exact",
            "processor": processor_class(processor),
            "dim": hidden_size(config),
        }
    except (OSError, ValueError, EntryNotFoundError) as exc:  # missing, unreachable, not JSON
        raise ModelError(f"cannot load model {model_name!r}: {first_line(exc)}") from exc


def random_weights(model_name: str | None) -> bool:
    """Whether a local model folder holds randomly initialised weights (`medindex make-model`
    marks its config.json): the neighbours its vectors find mean nothing. A hub id is a
    trained model; nothing is downloaded to tell."""
    if not model_name or not Path(model_name).is_dir():
        return False
    try:
        config = json.loads((Path(model_name) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("medindex_random_weights"))


def model_file(model_name: str, filename: str) -> Path:
    """One file of a model: from its folder, or from the hub through huggingface_hub's cache
    (which honours HF_HUB_OFFLINE and HF_HOME, as transformers does). A file neither cached
    nor reachable is refused at once: huggingface_hub would retry an unreachable hub for half
    a minute."""
    folder = Path(model_name)
    if folder.is_dir():
        return folder / filename
    try:
        return Path(hf_hub_download(model_name, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if problem := hub_unreachable():
        raise ModelError(
            f"model {model_name!r} is not cached and {problem}: give a local model with "
            "--model DIR (`medindex make-model --out DIR` saves one offline) or MEDINDEX_MODEL"
        )
    return Path(hf_hub_download(model_name, filename))


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the model hub cannot be reached (offline mode, no route, no name), None if a
    connection opens: one attempt, not huggingface_hub's retries."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"the model hub ({endpoint.hostname}) cannot be reached ({first_line(exc)})"
    return None


def commit_of(path: Path) -> str | None:
    """The hub commit a cached file belongs to (its snapshot folder is named after it); None
    for a file of a local folder."""
    found = COMMIT_FOLDER.search(path.as_posix())
    return found[1] if found else None


def processor_class(processor: Mapping) -> str:
    """The class transformers' AutoImageProcessor makes of a processor's settings: the class
    they name, as its PIL twin where torchvision is not installed (transformers' fallback)."""
    name = processor_name(processor)
    return name if find_spec("torchvision") else f"{name}Pil"


def processor_name(processor: Mapping) -> str:
    """The image processor a preprocessor_config.json names; older files name a feature
    extractor, newer ones may name the "Fast" variant of the same processor."""
    if named := processor.get("image_processor_type"):
        return named.removesuffix("Fast")
    if legacy := processor.get("feature_extractor_type"):
        return legacy.replace("FeatureExtractor", "ImageProcessor")
    raise ValueError("preprocessor_config.json names no image processor")


def fixed_input_size(processor: Mapping) -> tuple[int, int] | None:
    """(width, height) when a processor's settings (preprocessor_config.json, or a loaded
    processor's `to_dict()`) only resize to a fixed size and normalise (the ViT family): what
    the fast path reproduces. None for crops and shortest-edge resizes."""
    size = processor.get("size")
    if isinstance(size, int):  # an older config's bare number
        size = {"height": size, "width": size} if processor_name(processor) == SQUARE_SIZED else {}
    width, height = (size or {}).get("width"), (size or {}).get("height")
    plain = processor.get("do_resize", True) and processor.get("do_normalize", True)
    if not plain or processor.get("do_center_crop") or not (width and height):
        return None
    return int(width), int(height)


def hidden_size(config: Mapping) -> int:
    """The size of a model's output vectors, from its config (config.json, or a loaded
    model's `config.to_dict()`)."""
    sizes = config.get("hidden_sizes")  # ResNet-like configs: the last stage's
    size = sizes[-1] if sizes else config.get("hidden_size")
    if size is None:
        raise ValueError("its config.json states no hidden_size")
    return int(size)
