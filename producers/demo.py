"""`medindex demo`: sample data -> `medindex up` (real processes) -> ingest -> seed searches."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from rich.console import Console

from pipeline.errors import MedindexError
from pipeline.quality import label_field
from pipeline.schemas import point_id
from pipeline.settings import Settings, get_settings
from producers.harness import running_stack

if TYPE_CHECKING:
    from search_api import SearchClient

out = Console()
RANDOM_MODEL_NOTE = (
    "the model hub cannot be reached: using a randomly initialised ViT-S/16 built locally. "
    "It costs what dino-vits16 costs, but its neighbours are NOT meaningful."
)


def register(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--n", type=int, default=200, help="sample skin images")
    cmd.add_argument("--xrays", type=int, default=48, help="sample chest X-rays")
    cmd.add_argument("--mri-cases", type=int, default=8, help="sample brain-MRI cases")
    cmd.set_defaults(run=lambda args: run_demo(get_settings(), args.n, args.xrays, args.mri_cases))


def run_demo(settings: Settings, n: int, xrays: int = 48, mri_cases: int = 8) -> int:
    from pipeline.samples import skin

    home = settings.home.resolve()
    demo = home / "demo"
    model = _choose_model(settings, home)
    skin_data = _sample(demo / f"skin-{n}", "skin", n, "synthetic 600x450 lesion images")
    xray_data = _sample(demo / f"xray-{xrays}", "xray", xrays, "1024x1024 chest X-rays + CSV")
    mri_data = _sample(demo / f"brain-mri-{mri_cases}", "brain-mri", mri_cases, "BraTS cases")
    resnet = _choose_resnet(home)
    # Flower off: the demo must not depend on port 5555 being free.
    env = dict(os.environ, MEDINDEX_MODEL=model, MEDINDEX_HOME=str(home), MEDINDEX_FLOWER_PORT="0")
    up_log = demo / "up.log"
    out.print(f"[bold]2. medindex up[/]: Redis + embed worker + store worker (log: {up_log})")
    from search_api import SearchClient  # qdrant-client: slow to import

    with running_stack(env, up_log):
        _ingest(env, up_log, skin_data, SKIN, "--model", model, "--label-field", skin.LABEL_FIELD)
        _skin_searches(env, skin_data)
        _ingest(env, up_log, _csv_in(xray_data) or xray_data, XRAY, "--format", "table",
                "--model", resnet, "--pooling", "pooler")  # fmt: skip
        client = SearchClient(settings)
        _xray_search(env, client)
        _audit(env, XRAY, demo / "audit-xray")
        labels = _csv_in(mri_data)  # the sample's case -> tumour class table
        _ingest(env, up_log, mri_data, MRI, "--format", "nifti", "--model", model,
                *(["--labels-csv", str(labels)] if labels else []))  # fmt: skip
        _mri_searches(env, client)
    out.print("[bold green]demo finished[/]: the stack is stopped; `medindex up` runs it again")
    out.print(
        f"[bold]the search page[/] on {SKIN}, {XRAY} and {MRI}: `make page` "
        "(or `medindex up --serve 8000`), then open http://127.0.0.1:8000/"
    )
    return 0


SKIN, XRAY, MRI = "demo_skin_lesions", "demo_chest_xrays", "demo_brain_mri"
# Field names as the table reader normalises ChestX-ray14's columns, and the nifti reader's.
XRAY_FINDINGS, XRAY_AGE = "finding_labels", "patient_age"
MRI_MODALITY = "modality"


def _sample(folder: Path, kind: str, n: int, what: str) -> Path:
    """`medindex sample-data --kind KIND`'s writer, once: the folder is reused."""
    from producers.commands.data import SAMPLE_KINDS

    done = folder / ".written"
    module, function = SAMPLE_KINDS[kind]
    if not done.exists():
        out.print(f"[bold]1. sample data[/]: {n} {what} -> {folder}")
        written = getattr(importlib.import_module(module), function)(folder, n, 0)
        done.write_text(str(written))
    return Path(done.read_text())


def _csv_in(written: Path) -> Path | None:
    """The CSV a sample writer made: the path it returned, or the first one in its folder."""
    if written.suffix == ".csv":
        return written
    return next(iter(sorted(written.glob("*.csv"))), None)


def _ingest(env: dict, up_log: Path, data: Path, collection: str, *extra: str) -> None:
    out.print(f"\n[bold]3. medindex ingest[/] --dataset {data} --collection {collection}")
    argv = ["ingest", "--dataset", str(data), "--collection", collection, *extra]
    ingest = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], env=env, check=False)
    if ingest.returncode != 0:
        raise MedindexError(f"ingest failed (exit {ingest.returncode}); see {up_log}")


def _search(env: dict, title: str, collection: str, *argv: str) -> None:
    argv = ("search", "--collection", collection, *argv)
    out.print(f"\n[bold]{title}[/]: medindex {' '.join(_quoted(a) for a in argv)}")
    subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], env=env, check=True)


def _choose_resnet(home: Path) -> str:
    """microsoft/resnet-50 (MedSearch's X-ray model) where the hub answers, else a random
    ResNet-50 of its shape saved locally (`medindex make-model --arch resnet50`)."""
    if _hub_reachable():
        return "microsoft/resnet-50"
    from pipeline.random_models import build_random_resnet50  # torch: only when offline

    local = home / "models" / "resnet50-random"
    if not (local / "config.json").exists():
        build_random_resnet50(local)
    return str(local)


def _choose_model(settings: Settings, home: Path) -> str:
    if Path(settings.model).exists() or _hub_reachable():
        return settings.model
    from pipeline.random_models import build_random_vit  # torch: only when offline

    local = home / "models" / "vit-s16-random"
    if not (local / "config.json").exists():
        build_random_vit(local)
    out.print(f"[bold yellow]note[/]: {RANDOM_MODEL_NOTE}")
    return str(local)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _skin_searches(env: dict, data: Path) -> None:
    """The searches of the Qdrant skin-lesion notebook, run as `medindex search` commands."""
    from pipeline.samples import skin

    key, label = skin.demo_query(data)
    query_id = point_id(str(data), "train", key)
    out.print(f"\n[bold]4. searches[/] on {SKIN}: query {key} ({label})")
    for title, extra in skin.NOTEBOOK_SEARCHES:
        _search(env, title, SKIN, "--id", query_id, *extra)


def _xray_search(env: dict, client: SearchClient) -> None:
    """One filtered search: X-rays sharing any of the query's findings, of patients within
    15 years of its age (MedSearch's use: similar cases with the same findings)."""
    point = _first_point(client, XRAY, XRAY_FINDINGS, XRAY_AGE)
    findings, age = point["payload"][XRAY_FINDINGS], point["payload"][XRAY_AGE]
    must = [
        {"key": XRAY_FINDINGS, "match": {"any": findings}},
        {"key": XRAY_AGE, "range": {"gte": age - 15, "lte": age + 15}},
    ]
    title = f"X-rays with any of {findings}, patient aged {age} +- 15"
    _search(env, title, XRAY, "--id", point["id"], "--limit", "5",
            "--filter", json.dumps({"must": must}))  # fmt: skip


def _mri_searches(env: dict, client: SearchClient) -> None:
    """The same modality as the query, then the closest case per tumour class (the
    collection's label field)."""
    point = _first_point(client, MRI, MRI_MODALITY)
    modality = point["payload"][MRI_MODALITY]
    same = {"must": [{"key": MRI_MODALITY, "match": {"value": modality}}]}
    _search(env, f"MRI slices of modality {modality}", MRI, "--id", point["id"], "--limit", "5",
            "--filter", json.dumps(same))  # fmt: skip
    label = label_field(client.store.metadata(MRI))
    if label is None:
        out.print("(no tumour class recorded: no labels CSV was found, no per-class search)")
        return
    _search(env, f"closest case per {label}", MRI, "--id", point["id"], "--group-by", label,
            "--filter", json.dumps(same))  # fmt: skip


def _first_point(client: SearchClient, collection: str, *fields: str) -> dict:
    """A point carrying every one of `fields`, to query with."""
    carrying = {"must_not": [{"is_empty": {"key": field}} for field in fields]}
    return client.scroll(collection, carrying, limit=1)["points"][0]


def _audit(env: dict, collection: str, report: Path) -> None:
    """The dataset audit of one collection: its summary here, its CSVs and histogram in
    `report` (the page's Audit view shows the same)."""
    argv = ("audit", "--collection", collection, "--out", str(report))
    out.print(f"\n[bold]5. dataset audit[/]: medindex {' '.join(argv)}")
    subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], env=env, check=True)


def _quoted(arg: str) -> str:
    return f"'{arg}'" if " " in arg else arg
