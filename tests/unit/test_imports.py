"""What the house imports: no module cycle (the graph read from the source of pipeline/, tasks/,
producers/ and search_api/, imports inside functions and under TYPE_CHECKING included: a cycle
postponed is still a cycle), and only embed workers import torch (producers, the operator's
commands, the search API and a store worker's task modules start without it and without
transformers, each checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

PACKAGES = ("pipeline", "tasks", "producers", "search_api")
HEAVY = ("torch", "transformers")

# What each side loads: `medindex X` builds X's parser (the table names the others), then runs.
SIDES = {
    "producers": "import producers.ingest, producers.reindex, producers.status, pipeline.catalog",
    "medindex status, collections": "from pipeline.cli import build_parser; "
    "build_parser('status'); build_parser('collections'); "
    "import producers.status, pipeline.catalog, pipeline.store.remote",
    "search API": "import search_api, search_api.client, search_api.http",
    # every worker loads every task module; an embed worker loads the model code at its start
    "store worker": "from pipeline.celery_app import app; app.loader.import_default_modules()",
}


@pytest.mark.parametrize("side", SIDES)
def test_imports_no_torch(side: str) -> None:
    check = f"import sys; loaded = [m for m in {HEAVY!r} if m in sys.modules]; print(loaded)"
    code = f"{SIDES[side]}; {check}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{side} imports {result.stdout.strip()}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The house's modules that `module` imports: `from a.b import c` names a.b.c when that
    is a module, else a.b."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in (or is)
                package = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if name in known else base)
    return found & known


def import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    known = {module_name(path) for path in paths}
    return {
        module_name(path): imported(
            ast.parse(path.read_text()), module_name(path), path.name == "__init__.py", known
        )
        - {module_name(path)}
        for path in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (its modules in import order, the first again at the end)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            if cycle := visit(target, [*path, module]):
                return cycle
        done.add(module)
        return None

    return next(filter(None, (visit(module, []) for module in sorted(graph))), None)


def test_the_house_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"pipeline.store", "pipeline.store.remote", "pipeline.messages"} <= graph.keys()
    assert "pipeline.store.remote" in graph["pipeline.store"]  # imported in a function
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
