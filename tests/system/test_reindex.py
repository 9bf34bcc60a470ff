"""Zero-downtime reindexing through the real stack: versions behind an alias, verification,
quality guards, rollback, resuming an interrupted reindex, and model mismatches refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from datasets import load_dataset
from support import assert_one_line_error, sample_dataset

from pipeline.progress import JobTracker, connect_redis
from pipeline.random_models import build_random_vit
from pipeline.samples.skin import LABEL_FIELD
from pipeline.settings import get_settings
from producers.harness import RunningStack, run_medindex
from producers.reindex import versions
from search_api import Query, SearchClient

N = 240
ALIAS = "lesions"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_dataset(tmp_path_factory.mktemp("reindex") / "skin", N, seed=11)


def reindex(stack: RunningStack, dataset: Path, *extra: str, alias: str = ALIAS) -> dict:
    result = stack.medindex(
        "reindex", "--alias", alias, "--dataset", str(dataset), "--json", *extra
    )
    assert result.returncode == 0, result.stderr
    return result.json()


def ingest(stack: RunningStack, dataset: Path, collection: str, *extra: str) -> None:
    result = stack.medindex("ingest", "--dataset", str(dataset), "--collection", collection, *extra)
    assert result.returncode == 0, result.stderr


def kill_mid_reindex(stack: RunningStack, dataset: Path, alias: str) -> str:
    """`reindex --alias` killed (SIGKILL) once its job embeds; returns the version it built."""
    argv = [sys.executable, "-m", "pipeline.cli", "reindex", "--alias", alias, "--dataset",
            str(dataset), "--json"]  # fmt: skip
    producer = subprocess.Popen(argv, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    deadline = time.monotonic() + 120
    while not (jobs := tracker.recent_jobs(limit=1)) or not _embedding(tracker, jobs[0], alias):
        assert time.monotonic() < deadline, "the reindex's job did not start"
        time.sleep(0.2)
    os.kill(producer.pid, signal.SIGKILL)  # the producer dies mid-reindex
    producer.wait()
    return tracker.progress(jobs[0]).meta["collection"]


def _embedding(tracker: JobTracker, job_id: str, alias: str) -> bool:
    progress = tracker.progress(job_id)
    building = progress.meta["collection"].startswith(f"{alias}__v")
    return building and progress.embedded > 0 and not progress.finished


def serving() -> str:
    return SearchClient().store.aliases()[ALIAS]


@pytest.fixture(scope="module")
def first(stack: RunningStack, small_dataset: Path) -> dict:
    # The label field is given once; later versions of the alias inherit it.
    return reindex(stack, small_dataset, "--label-field", LABEL_FIELD)


def test_first_reindex_builds_a_verified_version(first: dict) -> None:
    assert first["collection"] == f"{ALIAS}__v1" and first["previous"] is None
    assert first["indexed"] == N and first["failed"] == 0
    assert 0 < first["quality"] <= 1
    assert serving() == f"{ALIAS}__v1"
    assert SearchClient().count(ALIAS) == N


def test_searches_never_fail_or_see_a_partial_index_during_the_switch(
    stack: RunningStack, small_dataset: Path, first: dict
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


def test_rollback_restores_the_previous_answers(stack: RunningStack, first: dict) -> None:
    client = SearchClient()
    vector = client.vector_of(ALIAS, client.scroll(ALIAS, limit=1)["points"][0]["id"])
    before = [h["id"] for h in client.search(f"{ALIAS}__v1", Query(vector=vector, limit=10))]
    result = stack.medindex("rollback", "--alias", ALIAS)
    assert result.returncode == 0, result.stderr
    assert serving() == f"{ALIAS}__v1"
    assert [h["id"] for h in client.search(ALIAS, Query(vector=vector, limit=10))] == before


def test_a_refused_switch_leaves_the_old_version_serving(
    stack: RunningStack, small_dataset: Path
) -> None:
    was = serving()
    result = stack.medindex(
        "reindex", "--alias", ALIAS, "--dataset", str(small_dataset), "--min-quality", "1.01"
    )
    assert_one_line_error(result, "below --min-quality")
    assert serving() == was
    assert SearchClient().count(ALIAS) == N


def test_an_interrupted_reindex_resumes_to_the_exact_count(
    stack: RunningStack, small_dataset: Path
) -> None:
    was = serving()
    interrupted = kill_mid_reindex(stack, small_dataset, ALIAS)
    assert serving() == was  # nothing switched
    resumed = reindex(stack, small_dataset)
    assert resumed["collection"] == interrupted  # the same version, continued
    assert resumed["indexed"] == N and SearchClient().count(ALIAS) == N
    assert serving() == interrupted


def test_collections_lists_versions_with_their_origin(
    stack: RunningStack, small_dataset: Path
) -> None:
    result = stack.medindex("collections", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["collection"]: row for row in result.json()}
    live = rows[serving()]
    assert live["alias"] == ALIAS and live["points"] == N
    assert live["model"] == os.environ["MEDINDEX_MODEL"] and live["pooling"] == "mean"
    assert live["dataset"] == str(small_dataset.resolve()) and live["quality"] > 0
    # The serving version, the one it replaced, and at most --keep 2 others.
    assert len([name for name in rows if name.startswith(f"{ALIAS}__v")]) <= 4


def test_another_model_is_refused(stack: RunningStack, small_dataset: Path, tmp_path: Path) -> None:
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
    stack: RunningStack, small_dataset: Path
) -> None:
    redis = connect_redis(get_settings().broker_url)
    running = redis.lock(f"medindex:reindex-lock:{ALIAS}", timeout=120)  # a reindex running
    assert running.acquire(blocking=False)
    try:
        result = stack.medindex("reindex", "--alias", ALIAS, "--dataset", str(small_dataset))
        assert_one_line_error(result, "another reindex of 'lesions' is running")
    finally:
        running.release()


def test_an_ingest_into_an_alias_waits_for_its_reindex(
    stack: RunningStack, small_dataset: Path, first: dict, tmp_path: Path
) -> None:
    """Issue 21, item 4: an ingest into the alias, or into the version it serves, takes the
    reindex's lock: it waits, says so, and gives up on one line if the reindex goes on."""
    redis = connect_redis(get_settings().broker_url)
    running = redis.lock(f"medindex:reindex-lock:{ALIAS}", timeout=120)  # a reindex running
    assert running.acquire(blocking=False)
    log = tmp_path / "ingest.err"
    try:
        result = stack.medindex(
            "ingest", "--dataset", str(small_dataset), "--collection", serving()
        )
        assert_one_line_error(result, f"'{ALIAS}' is being reindexed")
        argv = ["ingest", "--dataset", str(small_dataset), "--collection", ALIAS, "--json"]
        with log.open("w") as err:
            waiting = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", *argv],
                env=stack.env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + 60
        while "waiting up to" not in log.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        running.release()  # the reindex ends: the waiting ingest goes on
    out, _ = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, log.read_text()
    assert json.loads(out.splitlines()[-1])["indexed"] == N
    assert SearchClient().count(ALIAS) == N  # the same points, rewritten


def test_a_reindex_refuses_to_drop_another_datasets_points(
    stack: RunningStack, small_dataset: Path, tmp_path: Path
) -> None:
    """Issue 21, item 4: a collection holding another dataset too is not replaced by a version
    built from one of them: refused before anything is built, the collection untouched."""
    other = sample_dataset(tmp_path / "other", 24, seed=12)
    for data in (small_dataset, other):
        ingest(stack, data, "mixed")
    result = stack.medindex("reindex", "--alias", "mixed", "--dataset", str(small_dataset))
    assert_one_line_error(result, "mixed holds 24 points not from", "nothing was built")
    store = SearchClient().store
    assert "mixed" not in store.aliases() and store.count("mixed") == N + 24
    assert not versions(store.collections(), "mixed")


def test_a_reindex_refuses_to_drop_points_written_since_it_started(
    stack: RunningStack, small_dataset: Path
) -> None:
    """Issue 21, item 4: points that reach the serving collection while a reindex is
    interrupted (its lock lapsed) are not in the new version: the switch is refused."""
    ingest(stack, small_dataset, "grown")
    kill_mid_reindex(stack, small_dataset, "grown")
    # The same files under another source name: new ids, the same `source.dataset`.
    ingest(stack, small_dataset, "grown", "--source-name", "grown-again")
    result = stack.medindex("reindex", "--alias", "grown", "--dataset", str(small_dataset))
    assert_one_line_error(result, f"grown took {N} points since this reindex started")
    store = SearchClient().store
    assert "grown" not in store.aliases() and store.count("grown") == 2 * N


def test_a_reindex_rerun_over_changed_data_starts_a_new_version(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Issue 21, item 5: a reindex killed, then run again after its dataset changed, abandons
    (deletes) the version it was building, says so, and builds a new one."""
    data = sample_dataset(tmp_path / "release", N, seed=13)
    interrupted = kill_mid_reindex(stack, data, "release")
    sample_dataset(data, N + 16, seed=14)  # the next release, in the same folder
    summary = reindex(stack, data, alias="release")
    assert summary["abandoned"].startswith(f"{interrupted} (job ")
    assert "changed since job" in summary["abandoned"]
    assert summary["collection"] != interrupted and summary["indexed"] == N + 16
    store = SearchClient().store
    assert interrupted not in store.collections()
    assert store.aliases()["release"] == summary["collection"]
    assert store.count("release") == N + 16


def test_the_documented_ingest_then_weekly_reindex(
    stack: RunningStack, small_dataset: Path
) -> None:
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
