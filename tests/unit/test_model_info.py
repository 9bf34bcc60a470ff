"""What a model is, read from its two config files without torch: the same values transformers
reads from them (what `describe` recorded when it loaded them through transformers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from support import ROOT, free_port
from transformers import AutoConfig, AutoImageProcessor

from pipeline.model_info import ModelError, describe, random_weights
from pipeline.random_models import build_random_resnet50

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# The hub's older files (dino-vits16's and resnet-50's era): a feature extractor, a bare size.
LEGACY_PROCESSORS = {
    "vit": {"feature_extractor_type": "ViTFeatureExtractor", "size": 224, "resample": 2},
    "resnet": {"feature_extractor_type": "ConvNextFeatureExtractor", "size": 224,
               "crop_pct": 0.875, "resample": 3},
}  # fmt: skip


def transformers_reading(model: str) -> dict:
    """The values as transformers reads them, taken the way `describe` took them before."""
    config = AutoConfig.from_pretrained(model)
    processor = AutoImageProcessor.from_pretrained(model)
    size, sizes = processor.size, getattr(config, "hidden_sizes", None)
    fixed = (
        processor.do_resize
        and processor.do_normalize
        and not getattr(processor, "do_center_crop", False)
        and size.width
        and size.height
    )
    return {
        "model": model,
        "revision": getattr(config, "_commit_hash", None) or "local",
        "pooling": "mean",
        "preprocessing": "fast" if fixed else "exact",
        "processor": type(processor).__name__,
        "dim": sizes[-1] if sizes else config.hidden_size,
    }


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`medindex make-model --arch resnet50`'s model."""
    return build_random_resnet50(tmp_path_factory.mktemp("resnet50"))


def legacy_copy(model: Path, kind: str, out: Path) -> Path:
    """`model`'s config beside an older preprocessor_config.json of its kind."""
    out.mkdir()
    shutil.copy(model / "config.json", out)
    processor = {"do_resize": True, "do_normalize": True, **IMAGENET, **LEGACY_PROCESSORS[kind]}
    (out / "preprocessor_config.json").write_text(json.dumps(processor))
    return out


def test_describe_reads_what_transformers_reads(
    tiny_model: Path, resnet50: Path, tmp_path: Path
) -> None:
    models = [
        tiny_model,
        resnet50,
        legacy_copy(tiny_model, "vit", tmp_path / "vit-legacy"),
        legacy_copy(resnet50, "resnet", tmp_path / "resnet-legacy"),
    ]
    for model in map(str, models):
        assert describe(model, "mean", "fast") == transformers_reading(model), model
    assert describe(str(tiny_model), "mean")["preprocessing"] == "exact"  # as asked


def test_a_hub_model_is_read_from_the_cache_with_its_commit(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A hub id's files come through huggingface_hub's cache (offline here); the revision is
    the commit the cached snapshot belongs to. In a child: huggingface_hub reads HF_HUB_CACHE
    and HF_HUB_OFFLINE when imported."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--facebook--dino-vits16"
    shutil.copytree(tiny_model, repo / "snapshots" / commit, ignore=lambda *_: ["*.safetensors"])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = "import json, pipeline.model_info as m; print(json.dumps(m.describe(%r, 'mean')))"
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    read = subprocess.run(
        [sys.executable, "-c", code % "facebook/dino-vits16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    recorded = json.loads(read.stdout)
    assert recorded["revision"] == commit and recorded["dim"] == 384


def test_a_model_that_cannot_be_read_is_a_one_line_error(tiny_model: Path, tmp_path: Path) -> None:
    half = tmp_path / "no-processor"
    half.mkdir()
    shutil.copy(tiny_model / "config.json", half)
    broken = legacy_copy(tiny_model, "vit", tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    for model in (tmp_path / "missing", half, broken):
        with pytest.raises(ModelError, match=f"cannot load model '{model}': ") as refused:
            describe(str(model), "mean")
        assert "\n" not in str(refused.value)


def test_a_randomly_initialised_model_says_so(
    tiny_model: Path, resnet50: Path, tmp_path: Path
) -> None:
    """`make-model`'s models mark their config.json; the page reads it to warn that their
    neighbours mean nothing. A model without the mark, or a hub id, is taken as trained."""
    assert random_weights(str(tiny_model)) and random_weights(str(resnet50))
    trained = tmp_path / "trained"
    trained.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    del config["medindex_random_weights"]
    (trained / "config.json").write_text(json.dumps(config))
    assert not random_weights(str(trained))
    assert not random_weights("facebook/dino-vits16") and not random_weights(None)


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_model_not_cached_and_not_reachable_is_refused_at_once(
    offline: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Offline, or with the hub refusing connections, one attempt and one line naming the way
    out (a local model folder), instead of huggingface_hub's half minute of retries."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ModelError) as refused:
        describe("facebook/dino-vits16", "mean")
    assert time.monotonic() - started < 5
    message = str(refused.value)
    assert "\n" not in message and "--model DIR" in message and "make-model" in message
    assert ("HF_HUB_OFFLINE" if offline else "cannot be reached") in message
