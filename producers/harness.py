"""Start `medindex up` as a child process and know when it is ready: the one way the tests, the
demo, the benchmarks and the drills start a local stack.

Ready means the stack said so in its ready file (`medindex up --ready-file`, written once its
workers answered) and its broker answers a ping from here: no log line is parsed.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from pipeline.errors import MedindexError

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 90.0


def free_port() -> int:
    """A port free on this host now: a stack's Redis, Flower or page."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    """What a `medindex` command did."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        """Its last line of output, read as JSON (the `--json` summary)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_medindex(*argv: str, env: dict[str, str], timeout: float = 300) -> Result:
    """Run one `medindex` command with `env` and collect what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return Result(done.returncode, done.stdout, done.stderr)


@dataclass
class RunningStack:
    """A `medindex up` child: its environment, process, log and broker."""

    env: dict[str, str]
    process: subprocess.Popen
    log: Path
    broker_url: str

    def medindex(self, *argv: str, env: dict | None = None, timeout: float = 300) -> Result:
        return run_medindex(*argv, env=env or self.env, timeout=timeout)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> tuple[int, list[int]]:
        """SIGTERM, then wait: (its exit code, pids of descendants still alive after it)."""
        children = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        _, alive = psutil.wait_procs(children, timeout=30)
        return code, [p.pid for p in alive]


def start_stack(
    env: dict[str, str], log: Path, *up_args: str, timeout_s: float = READY_TIMEOUT_S
) -> RunningStack:
    """`medindex up [up_args]` with `env`, its output in `log`; returns once it is ready.

    Raises MedindexError, with the log's tail, when it exits or is not ready in time (and
    stops what it started)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    ready = log.with_name(log.name + ".ready")
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "pipeline.cli", "up", "--ready-file", str(ready), *up_args]
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while (broker := _ready_broker(ready, process.pid)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=STOP_TIMEOUT_S)
            how = f"exited with code {process.returncode}" if process.returncode else "timed out"
            tail = log.read_text(errors="replace")[-2000:]
            raise MedindexError(f"medindex up {how} before it was ready; its log ends:\n{tail}")
        time.sleep(0.2)
    return RunningStack(env, process, log, broker)


@contextmanager
def running_stack(
    env: dict[str, str], log: Path, *up_args: str, timeout_s: float = READY_TIMEOUT_S
) -> Iterator[RunningStack]:
    """`start_stack`, stopped however the block ends."""
    stack = start_stack(env, log, *up_args, timeout_s=timeout_s)
    try:
        yield stack
    finally:
        stack.stop()


def _ready_broker(ready: Path, pid: int) -> str | None:
    """The broker URL once `medindex up` (this `pid`) wrote its ready file and the broker
    answers; None until then."""
    try:
        said = json.loads(ready.read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return None
    if said.get("pid") != pid:
        return None
    try:
        redis.Redis.from_url(said["broker"], socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    return said["broker"]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
