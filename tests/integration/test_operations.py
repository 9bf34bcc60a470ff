"""Operating the pipeline: Flower sees it, `status` / `cancel` / resume, logs name the job."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from jobs import write_failing_first
from support import ARTIFACTS, N_IMAGES

from pipeline.celery_app import app
from pipeline.logs import JobContext, configure
from pipeline.messages import STORE_MANAGE_TASK
from pipeline.progress import JobTracker, connect_redis
from pipeline.schemas import point_id
from pipeline.settings import get_settings
from pipeline.store.remote import PATHS, RemoteAdmin
from producers.drills.chaos import fix_bad_images
from producers.harness import RunningStack
from producers.ingest import resend_pending
from search_api import SearchClient


def flower(path: str, auth: bool = True) -> httpx.Response:
    settings = get_settings()
    credentials = (settings.flower_user, settings.flower_password.get_secret_value())
    url = f"http://127.0.0.1:{settings.flower_port}{path}"
    return httpx.get(url, auth=credentials if auth else None, timeout=30)


def test_flower_lists_workers_and_counts_succeeded_tasks(ingested: dict) -> None:
    assert flower("/api/workers", auth=False).status_code == 401
    workers = flower("/api/workers?refresh=1").json()
    assert {name.split("-")[0] for name in workers} >= {"embed", "store"}
    for task, at_least in (("medindex.embed", N_IMAGES // 16), ("medindex.upsert", N_IMAGES // 16)):
        tasks = flower(f"/api/tasks?taskname={task}&state=SUCCESS").json()
        assert len(tasks) >= at_least, (task, len(tasks))
    metrics = flower("/metrics").text
    for task in ("medindex.embed", "medindex.upsert"):
        pattern = rf'flower_events_total\{{task="{task}",type="task-succeeded",[^}}]*\}} (\d+)'
        counted = sum(float(n) for n in re.findall(pattern, metrics))
        assert counted >= N_IMAGES // 16, (task, counted)


def test_the_stack_log_names_flower_and_holds_no_library_noise(
    stack: RunningStack, ingested: dict
) -> None:
    """After an ingest (the workers loaded the model): the ready line gives Flower's URL, each
    queue's banner its own exchange, and no library notice that asks nothing of the user."""
    text = stack.log.read_text()
    ready = next(line for line in text.splitlines() if "medindex up: ready" in line)
    assert f"Flower http://127.0.0.1:{get_settings().flower_port}/" in ready
    for queue in ("embed", "upsert", "store"):  # the workers' banners
        assert re.search(rf"\.> {queue}\s+exchange={queue}\(direct\) key={queue}\b", text)
    noise = ("superuser privileges", "LOAD REPORT", "requires torchvision", "Loading weights",
             "Memory overcommit must be enabled")  # fmt: skip
    assert not [words for words in noise if words in text]


def test_no_payload_value_reaches_flower(ingested: dict, dataset: Path) -> None:
    """Flower keeps what task events carry: upsert messages hold patient metadata."""
    import datasets

    table = datasets.load_dataset(str(dataset), split="train").select(range(32))
    values = set(table["image_id"]) | set(table["lesion_id"])
    shown = flower("/api/tasks?taskname=medindex.upsert").json()
    assert len(shown) >= N_IMAGES // 16
    for task in shown.values():
        text = json.dumps([task.get("args"), task.get("kwargs"), task.get("result")])
        assert "payloads" not in text and not any(v in text for v in values), text[:300]
    assert any("points" in str(task.get("kwargs")) for task in shown.values())


def test_no_store_call_argument_reaches_flower(stack: RunningStack) -> None:
    """Issue 21, item 14: the store calls' filters, point ids and specs were in their task
    events, which Flower shows and keeps in flower.db; a management call shows as its method
    and collection only. Issue 25: queries (a page session sent 913) are not in Flower's task
    list at all, which keeps the ingest's embed and upsert tasks in view (issue 23: they are
    not Celery tasks now, but calls on a list of their own)."""
    store = RemoteAdmin(get_settings())
    secret = f"flower-secret-{time.time_ns()}"
    point = point_id("flower", "train", secret)

    def calls() -> None:
        store.ensure_collection("flower_calls", {"dim": 4, "model": secret})
        store.retrieve("flower_calls", [point])
        store.count("flower_calls", {"must": [{"key": "image_id", "match": {"value": secret}}]})
        store.set_metadata("flower_calls", {"note": secret})  # after the queries, answered

    events = store_call_events(calls, expected=2)
    for event in events:
        assert secret not in json.dumps(event) and point not in json.dumps(event), event
    assert {e["name"] for e in events if "name" in e} == {STORE_MANAGE_TASK}
    sent = {e["uuid"]: e["kwargs"] for e in events if e["type"] == "task-sent"}
    assert sorted(sent.values()) == ["ensure_collection('flower_calls')",
                                     "set_metadata('flower_calls')"]  # fmt: skip
    deadline = time.monotonic() + 30
    for uuid, kwargs in sent.items():  # what Flower lists, and keeps in flower.db
        while (answer := flower(f"/api/task/info/{uuid}")).status_code == 404:
            assert time.monotonic() < deadline, f"Flower does not know task {uuid}"
            time.sleep(0.2)
        assert answer.json()["kwargs"] == kwargs
    assert not [t for t in flower("/api/tasks").json().values() if "retrieve" in str(t)]


def store_call_events(calls: Callable[[], None], expected: int) -> list[dict]:
    """The task events of the `expected` store calls that `calls` makes, as Flower receives
    them, once each of them has succeeded."""
    events: list[dict] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        capture = receiver.itercapture(wakeup=False)
        next(capture)  # listening from here on
        calls()
        deadline = time.monotonic() + 30
        while True:
            ours = {e["uuid"] for e in events if e.get("name") in PATHS}
            done = {e["uuid"] for e in events if e["type"] == "task-succeeded"}
            if len(ours) == expected and ours <= done:
                return [e for e in events if e.get("uuid") in ours]
            assert time.monotonic() < deadline, f"store call events missing: {events}"
            next(capture)


def test_flower_dashboard_in_headless_chromium(ingested: dict) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: `make test` installs it"
    settings = get_settings()
    password = settings.flower_password.get_secret_value()
    url = f"http://{settings.flower_user}:{password}@127.0.0.1:{settings.flower_port}/workers"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "flower-dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={ARTIFACTS / 'chromium-profile'}",
            "--window-size=1400,900", "--virtual-time-budget=5000", f"--screenshot={shot}", url,
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty canvas


def test_status_cancel_and_resume(stack: RunningStack, dataset: Path) -> None:
    started = stack.medindex(
        "ingest", "--dataset", str(dataset), "--collection", "ops", "--no-wait", "--json"
    )
    assert started.returncode == 0, started.stderr
    job_id = started.json()["job_id"]
    assert stack.medindex("cancel", job_id).returncode == 0
    status = _status(stack, job_id)
    assert status["jobs"][0]["state"] in ("cancelled", "done")
    assert {w.split("-")[0] for w in status["workers"]} >= {"embed", "store"}
    assert set(status["queues"]) == {"embed", "upsert", "store"}
    _until_queues_drain(stack, job_id)
    partial = _status(stack, job_id)["jobs"][0]
    assert partial["state"] == "cancelled" and partial["indexed"] < N_IMAGES

    resumed = stack.medindex(
        "ingest", "--dataset", str(dataset), "--collection", "ops", "--job-id", job_id, "--json"
    )
    assert resumed.returncode == 0, resumed.stderr
    queued = int(re.search(r"(\d+) jobs of 16 queued", resumed.stderr).group(1))
    assert queued < -(-N_IMAGES // 16)  # only the shards not yet done
    assert resumed.json()["indexed"] == N_IMAGES
    assert SearchClient().count("ops") == N_IMAGES
    assert _status(stack, job_id)["jobs"][0]["state"] == "done"


def test_retry_leaves_a_cancelled_job_cancelled(stack: RunningStack, tmp_path: Path) -> None:
    """Issue 21, item 3: `retry` sends a cancelled job's failed images again, and only them;
    the rows its cancel skipped stay pending, and the stall re-send does not send them."""
    data, bad = write_failing_first(tmp_path, 480)
    tracker = JobTracker(connect_redis(get_settings().broker_url))
    argv = ("--dataset", str(data), "--collection", "cancelled", "--job-id", "cancelled")
    assert stack.medindex("ingest", *argv, "--no-wait").returncode == 0
    deadline = time.monotonic() + 120
    while tracker.progress("cancelled").failed < len(bad):  # the first job is done
        assert time.monotonic() < deadline, "the bad images were not failed"
        time.sleep(0.02)
    assert stack.medindex("cancel", "cancelled").returncode == 0
    _until_queues_drain(stack, "cancelled")
    before = tracker.progress("cancelled")
    skipped = before.total - before.done
    assert before.failed == len(bad) and skipped > 0, before

    fix_bad_images(data, bad)
    retried = stack.medindex("retry", "cancelled", "--json", "--timeout", "30")
    assert retried.returncode == 0, retried.stderr
    said = " ".join(retried.stderr.split())  # wrapped by the console
    assert f"stays cancelled: only its failed images were sent again; the {skipped}" in said
    after = tracker.progress("cancelled")
    assert after.state == "cancelled" and after.total - after.done == skipped
    assert (after.indexed, after.failed) == (before.indexed + len(bad), 0)
    # What a producer waiting on a stalled job would send: nothing the cancel skipped.
    assert resend_pending(tracker, "cancelled", get_settings()) == 0
    assert SearchClient().count("cancelled") == after.indexed


def _status(stack: RunningStack, job_id: str) -> dict:
    result = stack.medindex("status", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return result.json()


def _until_queues_drain(stack: RunningStack, job_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(stack, job_id)
        if not any(status["queues"].values()) and not status["unacked"]:
            return
        time.sleep(1)
    pytest.fail("queues did not drain")


def test_worker_logs_name_job_and_task(stack: RunningStack, ingested: dict) -> None:
    lines = [line for line in stack.log.read_text().splitlines() if "ForkPoolWorker" in line]
    embedded = [
        line for line in lines if "embedded" in line and f"job={ingested['job_id']}" in line
    ]
    assert embedded, "no embed log line names the job"
    assert all(re.search(r"task=[0-9a-f-]{36} ", line) for line in embedded)
    written = [line for line in lines if "wrote" in line and ingested["job_id"] in line]
    assert written, "no upsert log line names the job"


def test_json_log_lines_carry_the_context(capsys: pytest.CaptureFixture) -> None:
    logger = logging.getLogger("medindex.test.json")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    configure(logger, as_json=True)
    logger.warning("hello %s", "there")
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["message"] == "hello there"
    assert record["job_id"] == "-" and record["task_id"] == "-"
    assert any(isinstance(f, JobContext) for f in handler.filters)
