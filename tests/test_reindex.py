"""Zero-downtime reindexing through the real stack: versions behind an alias, verification,
quality guards, rollback, resuming an interrupted reindex, and model mismatches refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Stack, run_medindex
from datasets import load_dataset
from test_bad_input import assert_one_line_error

from pipeline.progress import JobTracker, connect_redis
from pipeline.random_models import build_random_vit
from pipeline.samples import write_sample_dataset
from pipeline.samples.skin import LABEL_FIELD
from pipeline.settings import get_settings
from search_api import Query, SearchClient

N = 240
ALIAS = "lesions"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("reindex") / "skin", N, seed=11)


def reindex(stack: Stack, dataset: Path, *extra: str) -> dict:
    result = stack.medindex(
        "reindex", "--alias", ALIAS, "--dataset", str(dataset), "--json", *extra
    )
    assert result.returncode == 0, result.stderr
    return result.json()


def serving() -> str:
    return SearchClient().store.aliases()[ALIAS]


@pytest.fixture(scope="module")
def first(stack: Stack, small_dataset: Path) -> dict:
    # The label field is given once; later versions of the alias inherit it.
    return reindex(stack, small_dataset, "--label-field", LABEL_FIELD)


def test_first_reindex_builds_a_verified_version(first: dict) -> None:
    assert first["collection"] == f"{ALIAS}__v1" and first["previous"] is None
    assert first["indexed"] == N and first["failed"] == 0
    assert 0 < first["quality"] <= 1
    assert serving() == f"{ALIAS}__v1"
    assert SearchClient().count(ALIAS) == N


def test_searches_never_fail_or_see_a_partial_index_during_the_switch(
    stack: Stack, small_dataset: Path, first: dict
) -> None:
    client = SearchClient()
    probe = client.scroll(ALIAS, limit=1)["points"][0]["id"]
    vector = client.vector_of(ALIAS, probe)
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_continuously() -> None:
        searcher = SearchClient()
        while not stop.is_set():
            try:
                hits = searcher.search(ALIAS, Query(vector=vector, limit=5))
                seen.append((len(hits), searcher.count(ALIAS)))
            except BaseException as exc:  # any failure is what this test looks for
                errors.append(exc)

    thread = threading.Thread(target=search_continuously)
    thread.start()
    try:
        second = reindex(stack, small_dataset)
        time.sleep(1)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert len(seen) > 10
    assert all(hits == 5 and count == N for hits, count in seen)
    assert second["collection"] == f"{ALIAS}__v2" and second["previous"] == f"{ALIAS}__v1"
    assert serving() == f"{ALIAS}__v2"


def test_rollback_restores_the_previous_answers(stack: Stack, first: dict) -> None:
    client = SearchClient()
    vector = client.vector_of(ALIAS, client.scroll(ALIAS, limit=1)["points"][0]["id"])
    before = [h["id"] for h in client.search(f"{ALIAS}__v1", Query(vector=vector, limit=10))]
    result = stack.medindex("rollback", "--alias", ALIAS)
    assert result.returncode == 0, result.stderr
    assert serving() == f"{ALIAS}__v1"
    assert [h["id"] for h in client.search(ALIAS, Query(vector=vector, limit=10))] == before


def test_a_refused_switch_leaves_the_old_version_serving(stack: Stack, small_dataset: Path) -> None:
    was = serving()
    result = stack.medindex(
        "reindex", "--alias", ALIAS, "--dataset", str(small_dataset), "--min-quality", "1.01"
    )
    assert_one_line_error(result, "below --min-quality")
    assert serving() == was
    assert SearchClient().count(ALIAS) == N


def test_an_interrupted_reindex_resumes_to_the_exact_count(
    stack: Stack, small_dataset: Path
) -> None:
    was = serving()
    argv = [sys.executable, "-m", "pipeline.cli", "reindex", "--alias", ALIAS, "--dataset",
            str(small_dataset), "--json"]  # fmt: skip
    producer = subprocess.Popen(argv, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = tracker.recent_jobs(limit=1)
        if jobs and tracker.progress(jobs[0]).meta["collection"].startswith(f"{ALIAS}__v"):
            progress = tracker.progress(jobs[0])
            if progress.embedded > 0 and not progress.finished:
                break
        time.sleep(0.2)
    os.kill(producer.pid, signal.SIGKILL)  # the producer dies mid-reindex
    producer.wait()
    interrupted = tracker.progress(jobs[0]).meta["collection"]
    assert serving() == was  # nothing switched
    resumed = reindex(stack, small_dataset)
    assert resumed["collection"] == interrupted  # the same version, continued
    assert resumed["indexed"] == N and SearchClient().count(ALIAS) == N
    assert serving() == interrupted


def test_collections_lists_versions_with_their_origin(stack: Stack, small_dataset: Path) -> None:
    result = stack.medindex("collections", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["collection"]: row for row in result.json()}
    live = rows[serving()]
    assert live["alias"] == ALIAS and live["points"] == N
    assert live["model"] == os.environ["MEDINDEX_MODEL"] and live["pooling"] == "mean"
    assert live["dataset"] == str(small_dataset.resolve()) and live["quality"] > 0
    # The serving version, the one it replaced, and at most --keep 2 others.
    assert len([name for name in rows if name.startswith(f"{ALIAS}__v")]) <= 4


def test_another_model_is_refused(stack: Stack, small_dataset: Path, tmp_path: Path) -> None:
    result = stack.medindex(
        "ingest", "--dataset", str(small_dataset), "--collection", ALIAS, "--pooling", "cls"
    )
    assert_one_line_error(result, "pooling")
    other = build_random_vit(tmp_path / "other-vit", num_layers=1, seed=1)
    env = stack.env | {"MEDINDEX_MODEL": str(other)}
    result = run_medindex("ingest", "--dataset", str(small_dataset), "--collection", ALIAS, env=env)
    assert_one_line_error(result, "was made with model")
    query = tmp_path / "query.jpg"
    load_dataset(str(small_dataset), split="train")[0]["image"].save(query)
    result = stack.medindex(
        "search", "--collection", ALIAS, "--image", str(query), "--model", str(other)
    )
    assert_one_line_error(result, "was made with model")
    # Without an explicit model, an image query uses the one the collection records.
    result = run_medindex("search", "--collection", ALIAS, "--image", str(query), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.json()[0]["score"] >= 0.99


def test_a_second_reindex_of_the_same_alias_is_refused_while_one_runs(
    stack: Stack, small_dataset: Path
) -> None:
    redis = connect_redis(get_settings().broker_url)
    running = redis.lock(f"medindex:reindex-lock:{ALIAS}", timeout=120)  # a reindex running
    assert running.acquire(blocking=False)
    try:
        result = stack.medindex("reindex", "--alias", ALIAS, "--dataset", str(small_dataset))
        assert_one_line_error(result, "another reindex of 'lesions' is running")
    finally:
        running.release()


def test_the_documented_ingest_then_weekly_reindex(stack: Stack, small_dataset: Path) -> None:
    """Deployments ingest into $MEDINDEX_COLLECTION, then reindex with it as --alias."""
    ingested = stack.medindex(
        "ingest", "--dataset", str(small_dataset), "--collection", "deployed", "--json"
    )
    assert ingested.returncode == 0, ingested.stderr
    for week in (1, 2):
        # No label field anywhere: quality is not computed, and the guard says so, not refuses.
        result = stack.medindex(
            "reindex", "--alias", "deployed", "--dataset", str(small_dataset), "--json",
            "--min-quality", "0.99",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = result.json()
        assert summary["quality"] is None and summary["label_field"] is None
        assert summary["quality_note"].startswith("quality not computed: the collection has no")
        assert "quality not computed" in " ".join(result.stderr.split())  # wrapped by the console
        assert result.json()["collection"] == f"deployed__v{week}"
        assert SearchClient().store.aliases()["deployed"] == f"deployed__v{week}"
        assert SearchClient().count("deployed") == N
