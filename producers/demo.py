"""`medindex demo`: sample data -> `medindex up` (real processes) -> ingest -> seed searches."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console

from pipeline.errors import MedindexError
from pipeline.schemas import point_id
from pipeline.settings import Settings, get_settings

out = Console()
RANDOM_MODEL_NOTE = (
    "the model hub cannot be reached: using a randomly initialised ViT-S/16 built locally. "
    "It costs what dino-vits16 costs, but its neighbours are NOT meaningful."
)


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("demo", help="run the whole pipeline on sample data, then search")
    cmd.add_argument("--n", type=int, default=200, help="sample images")
    cmd.set_defaults(run=lambda args: run_demo(get_settings(), args.n))


def run_demo(settings: Settings, n: int) -> int:
    from pipeline.samples import write_sample_dataset

    home = settings.home.resolve()
    model = _choose_model(settings, home)
    data = home / "demo" / f"sample-{n}"
    if not (data / "data").exists():
        out.print(f"[bold]1. sample data[/]: {n} synthetic 600x450 lesion images -> {data}")
        write_sample_dataset(data, n, seed=0)
    collection = "demo_skin_lesions"
    # Flower off: the demo must not depend on port 5555 being free.
    env = dict(os.environ, MEDINDEX_MODEL=model, MEDINDEX_HOME=str(home), MEDINDEX_FLOWER_PORT="0")
    up_log = home / "demo" / "up.log"
    out.print(f"[bold]2. medindex up[/]: Redis + embed worker + store worker (log: {up_log})")
    with up_log.open("w") as log, _running_stack(env, log, up_log):
        out.print(f"[bold]3. medindex ingest[/] --dataset {data} --collection {collection}")
        ingest = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "ingest", "--dataset", str(data),
             "--collection", collection, "--model", model],
            env=env, check=False,
        )  # fmt: skip
        if ingest.returncode != 0:
            raise MedindexError(f"ingest failed (exit {ingest.returncode}); see {up_log}")
        _seed_searches(env, data, collection)
    out.print("[bold green]demo finished[/]: the stack is stopped; `medindex up` runs it again")
    return 0


def _choose_model(settings: Settings, home: Path) -> str:
    if Path(settings.model).exists() or _hub_reachable():
        return settings.model
    from pipeline.model import build_random_vit

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


class _running_stack:
    """`medindex up` as a child process, stopped with SIGTERM however the demo ends."""

    def __init__(self, env: dict, log: object, log_path: Path) -> None:
        self.env, self.log, self.log_path = env, log, log_path

    def __enter__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "up"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while "medindex up: ready" not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text().strip().splitlines()[-1:]
                raise MedindexError(f"medindex up did not start: {' '.join(tail)}")
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def _seed_searches(env: dict, data: Path, collection: str) -> None:
    """The searches of the Qdrant skin-lesion notebook, run as `medindex search` commands."""
    import datasets

    rows = datasets.load_dataset(str(data), split="train").select_columns(["image_id", "dx"])
    melanoma = next((r for r in rows if r["dx"] == "melanoma"), rows[0])
    query_id = point_id(str(data), "train", melanoma["image_id"])
    out.print(f"\n[bold]4. searches[/]: query {melanoma['image_id']} ({melanoma['dx']})")
    female_55 = (
        '{"must": [{"key": "sex", "match": {"value": "female"}}], '
        '"should": [{"key": "age", "range": {"gte": 55}}]}'
    )
    not_nevus_on_torso = (
        '{"must_not": [{"key": "dx", "match": {"value": "melanocytic_Nevi"}}], '
        '"must": [{"key": "localization", "match": {"any": ["back", "trunk", "chest"]}}]}'
    )
    searches = [
        ("top 5 by similarity", ["--limit", "5"]),
        ("female, age >= 55 (the notebook's filter)", ["--limit", "5", "--filter", female_55]),
        ("not a nevus, on back/trunk/chest", ["--limit", "5", "--filter", not_nevus_on_torso]),
        ("above a score threshold", ["--limit", "5", "--score-threshold", "0.9"]),
        ("most similar case per diagnosis", ["--group-by", "dx", "--limit", "7"]),
    ]
    for title, extra in searches:
        argv = ["search", "--collection", collection, "--id", query_id, *extra]
        out.print(f"\n[bold]{title}[/]: medindex {' '.join(_quoted(a) for a in argv)}")
        subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], env=env, check=True)


def _quoted(arg: str) -> str:
    return f"'{arg}'" if " " in arg else arg
