"""What can be checked of the deployment without a Docker engine or a cluster: the files
parse, every MEDINDEX_* variable they set is a real setting, every command they run exists,
and every queue a worker consumes is one the app routes tasks to."""

from __future__ import annotations

import re

import pytest
import yaml
from support import ROOT

from pipeline.celery_app import app
from pipeline.cli import build_parser
from pipeline.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
DOCKERFILES = sorted((ROOT / "deploy").glob("Dockerfile.*"))
SETTINGS = {f"MEDINDEX_{name.upper()}" for name in Settings.model_fields}
QUEUES = {queue.name for queue in app.conf.task_queues}


def subcommands() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return set(commands.choices)


def deployed_text() -> str:
    files = [COMPOSE, *MANIFESTS, *DOCKERFILES, ROOT / ".env.example"]
    return "\n".join(path.read_text() for path in files)


def commands_in(node: object) -> list[str]:
    """Every `command` / `args` of a compose service or a Kubernetes container, as one line."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("command", "args") and isinstance(value, list | str):
                found.append(" ".join(value) if isinstance(value, list) else value)
            else:
                found += commands_in(value)
    elif isinstance(node, list):
        for item in node:
            found += commands_in(item)
    return found


def all_commands() -> list[str]:
    documents = [yaml.safe_load(COMPOSE.read_text())]
    for manifest in MANIFESTS:
        documents += [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    return [c for d in documents for c in commands_in(d)]


def test_compose_and_manifests_parse() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert {"redis", "qdrant", "embed-worker", "upsert-worker", "flower", "search-api"} <= set(
        compose["services"]
    )
    kinds = {d["kind"] for m in MANIFESTS for d in yaml.safe_load_all(m.read_text()) if d}
    assert {"Deployment", "ScaledObject", "Job", "CronJob", "ConfigMap", "StatefulSet"} <= kinds
    cluster = {
        name for name, s in compose["services"].items() if "qdrant-cluster" in s.get("profiles", [])
    }
    assert cluster == {"qdrant-node-1", "qdrant-node-2", "qdrant-node-3"}


def test_every_medindex_variable_is_a_setting() -> None:
    used = set(re.findall(r"\bMEDINDEX_[A-Z0-9_]+", deployed_text()))
    assert used, "the deployment sets no MEDINDEX_* variable"
    assert used <= SETTINGS, f"not settings: {sorted(used - SETTINGS)}"


def test_env_example_lists_every_setting() -> None:
    listed = set(
        re.findall(r"^#?\s*(MEDINDEX_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert listed == SETTINGS, f"missing: {sorted(SETTINGS - listed)}"


@pytest.mark.parametrize("command", all_commands())
def test_every_command_exists(command: str) -> None:
    for sub in re.findall(r"\bmedindex\s+([a-z][a-z-]*)", command):
        assert sub in subcommands(), f"`medindex {sub}` does not exist: {command}"
    if "celery" in command:
        assert "-A pipeline.celery_app" in command, command
        for queues in re.findall(r"-Q\s+(\S+)", command):
            assert set(queues.split(",")) <= QUEUES, command


def test_images_run_medindex() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.search(r'^CMD \["medindex"', text, re.M), dockerfile.name
        assert "pip install" in text and "USER " in text, dockerfile.name
