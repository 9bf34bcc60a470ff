"""Chaos run: ingest a dataset laced with poisonous images while SIGKILLing parts of the stack
at random, then fix the bad files and `medindex retry`; print one line of figures.

    python -m producers.drills.chaos --images 400 --kills 8        # make chaos
    python -m producers.drills.chaos --images 160 --kills 4 --json  # the system tests

It runs its own `medindex up` (own Redis port and home, a 30 s visibility timeout so that a
killed worker's jobs come back in seconds rather than ten minutes) in a temporary folder, and
kills, in turn: an embed pool process (mid-job), the embed worker, the store worker (points
buffered, not yet written) and Redis (restarted from its append-only file). Exit 0 only when
lost = 0, duplicates = 0, indexed = valid, reported = tried, and after the retry every image of
the fixed dataset is indexed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import psutil

from pipeline.samples.bad_images import bad_images, odd_images
from pipeline.store.points import every_point
from producers.harness import free_port

COLLECTION = "chaos"
VICTIMS = ("embed pool process", "embed worker", "store worker", "redis")


@dataclass
class Figures:
    images: int = 0
    valid: int = 0
    kills: int = 0
    restarts: int = 0
    indexed: int = 0
    lost: int = 0
    duplicates: int = 0
    bad_tried: int = 0
    bad_reported: int = 0
    bad_indexed: int = 0  # refused images that made it into the index anyway: must be 0
    resent: int = 0  # rows the producer sent again after a stall (a message lost on the way)
    indexed_after_retry: int = 0  # once the bad files are fixed and `medindex retry` ran
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.indexed == self.valid
            and self.bad_reported == self.bad_tried
            and self.bad_indexed == 0
            and self.indexed_after_retry == self.images
        )

    def line(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in asdict(self).items())
        return f"chaos: {fields} -> {'OK' if self.ok else 'FAILED'}"


# --- the dataset --------------------------------------------------------------------------


def write_laced_dataset(folder: Path, n_valid: int, seed: int) -> tuple[Path, dict[str, str]]:
    """Sample images plus odd-but-valid ones and odd metadata, with every bad image spread
    through the rows twice. Returns the folder and {bad image key: expected reason}."""
    from pipeline.samples import write_sample_dataset

    base = write_sample_dataset(folder / "base", n_valid, seed)
    table = datasets.load_dataset(str(base), split="train")
    rows = table.to_list()
    template = rows[0]
    extra: list[dict] = []
    for name, data in odd_images(seed).items():
        extra.append(_row(template, f"odd_{name}", data))
    extra.append(_row(template, "odd_nan_age", rows[1]["image"]["bytes"], age=float("nan")))
    extra.append(_row(template, "odd_no_age", rows[2]["image"]["bytes"], age=None))
    extra.append(_row(template, "odd_sex", rows[3]["image"]["bytes"], sex="intersex/other"))
    bad: dict[str, str] = {}
    for copy in range(2):
        for name, (data, reason) in bad_images().items():
            key = f"bad_{name}_{copy}"
            bad[key] = reason
            extra.append(_row(template, key, data))
    rng = random.Random(seed)
    for row in extra:
        rows.insert(rng.randrange(len(rows) + 1), row)
    _write(folder / "laced", rows, table.features)
    return folder / "laced", bad


def fix_bad_images(folder: Path, bad: dict[str, str]) -> None:
    """What a user does after `medindex report`: replace each refused file with a good one."""
    table = datasets.load_dataset(str(folder), split="train")
    rows = table.to_list()
    good = next(r["image"]["bytes"] for r in rows if r["image_id"].startswith("ISIC_"))
    for row in rows:
        if row["image_id"] in bad:
            row["image"] = {"bytes": good, "path": None}
    _write(folder, rows, table.features)


def _row(template: dict, key: str, data: bytes, **changes: object) -> dict:
    return template | {"image_id": key, "image": {"bytes": data, "path": None}} | changes


def _write(folder: Path, rows: list[dict], features: datasets.Features) -> None:
    path = folder / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [row[name] for row in rows] for name in features}
    tmp = path.with_suffix(".tmp")
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(tmp))
    tmp.replace(path)


# --- the stack and its processes ----------------------------------------------------------


def find(up: psutil.Process, victim: str) -> psutil.Process | None:
    """The live process playing `victim` under `medindex up`, if any right now."""
    try:
        for child in up.children():
            cmdline = child.cmdline()
            if not cmdline:  # a zombie, or a child between fork and exec
                continue
            if victim == "redis" and "redis-server" in cmdline[0]:
                return child
            if victim == "store worker" and "upsert,store" in cmdline:
                return child
            if victim.startswith("embed") and "embed" in cmdline and "-Q" in cmdline:
                if victim == "embed worker":
                    return child
                pool = child.children()
                return pool[0] if pool else None
    except psutil.Error:
        return None
    return None


def kill_and_wait_for_restart(up: psutil.Process, victim: str, timeout_s: float = 90) -> bool:
    deadline = time.monotonic() + timeout_s
    target = None
    while target is None and time.monotonic() < deadline:
        target = find(up, victim)
        time.sleep(0.1)
    if target is None:
        return False
    target.send_signal(signal.SIGKILL)
    while time.monotonic() < deadline:
        again = find(up, victim)
        if again is not None and again.pid != target.pid:
            return True
        time.sleep(0.2)
    return False


# --- the run ------------------------------------------------------------------------------


def run(n_valid: int, kills: int, seed: int, workdir: Path, layers: int) -> Figures:
    env = chaos_env(workdir, layers)
    os.environ.update(env)  # this process reads the same settings as the stack
    from pipeline.progress import JobTracker, connect_redis
    from pipeline.random_models import build_random_vit
    from pipeline.settings import get_settings
    from pipeline.store import open_store
    from producers.harness import start_stack
    from producers.ingest import IngestRequest, retry_failed, start_ingest, wait
    from producers.spec import SourceSpec

    build_random_vit(Path(env["MEDINDEX_MODEL"]), num_layers=layers)
    data, bad = write_laced_dataset(workdir / "data", n_valid, seed)
    figures = Figures(images=len(datasets.load_dataset(str(data), split="train")))
    figures.valid, figures.bad_tried = figures.images - len(bad), len(bad)
    settings = get_settings()
    started = time.monotonic()
    stack = start_stack(env, workdir / "up.log")
    up = stack.process
    try:
        job_id, _, _ = start_ingest(
            IngestRequest(SourceSpec(dataset=str(data)), COLLECTION), settings
        )
        tracker = JobTracker(connect_redis(settings.broker_url))
        rng = random.Random(seed)
        plan = [VICTIMS[i % len(VICTIMS)] for i in range(kills)]
        rng.shuffle(plan)
        for victim in plan:
            time.sleep(rng.uniform(0.5, 3.0))
            figures.kills += 1
            figures.restarts += kill_and_wait_for_restart(psutil.Process(up.pid), victim)
            print(f"chaos: killed the {victim}", file=sys.stderr, flush=True)
        follow = {"on_progress": lambda _: None, "timeout_s": 900, "settings": settings}
        figures.resent = wait(tracker, job_id, **follow).resent
        store = open_store(settings)
        measure(figures, store, tracker, job_id, bad)
        fix_bad_images(data, bad)
        retry_failed(job_id, settings)
        wait(tracker, job_id, **follow)
        figures.indexed_after_retry = len(set(indexed_keys(store, COLLECTION)))
    finally:
        stack.stop()
    figures.seconds = round(time.monotonic() - started, 1)
    return figures


def chaos_env(workdir: Path, layers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDINDEX_")}
    return env | {
        "MEDINDEX_HOME": str(workdir / "home"),
        "MEDINDEX_LOCAL_REDIS_PORT": str(free_port()),
        "MEDINDEX_FLOWER_PORT": "0",
        "MEDINDEX_MODEL": str(workdir / f"vit-{layers}"),
        "MEDINDEX_EMBED_CONCURRENCY": "2",
        "MEDINDEX_VISIBILITY_TIMEOUT_S": "30",
        "MEDINDEX_STORE_RETRY_BUDGET_S": "15",
    }


def measure(
    figures: Figures,
    store: object,
    tracker: object,
    job_id: str,
    bad: dict,
    collection: str = COLLECTION,
) -> None:
    keys = indexed_keys(store, collection)
    unique = set(keys)
    figures.indexed = len(unique - bad.keys())
    figures.duplicates = len(keys) - len(unique)
    figures.bad_indexed = len(unique & bad.keys())
    figures.lost = figures.valid - figures.indexed
    reasons = {f["key"]: f["reason"] for f in tracker.failures(job_id)}
    figures.bad_reported = sum(
        1 for key, reason in bad.items() if re.search(reason, reasons.get(key, ""))
    )


def indexed_keys(store: object, collection: str) -> list[str]:
    """Every point's image key, read back from the store page by page."""
    return [hit["payload"]["image_id"] for hit in every_point(store, collection)]


def arguments(description: str) -> argparse.ArgumentParser:
    """The options `make chaos` and `make cluster` share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=int, default=400, help="valid sample images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=12, help="ViT layers (12 = ViT-S/16)")
    parser.add_argument("--json", action="store_true", help="last line: the figures as JSON")
    return parser


def report(figures: object, as_json: bool) -> int:
    """The figures' line (then as JSON); the exit status."""
    print(figures.line(), flush=True)
    if as_json:
        print(json.dumps(asdict(figures) | {"ok": figures.ok}))
    return 0 if figures.ok else 1


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medindex-chaos-") as workdir:
        figures = run(args.images, args.kills, args.seed, Path(workdir), args.layers)
    return report(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
