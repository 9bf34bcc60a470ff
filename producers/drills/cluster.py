"""Cluster run: broker, store, two embed workers, producer and Flower on hosts of their own
(Linux network namespaces on a bridge, real TCP between them), with links cut and processes
killed mid-job; print one line of figures.

    python -m producers.drills.cluster --images 400             # make cluster (root)
    python -m producers.drills.cluster --images 120 --layers 1 --json   # the system tests

Each host is a network namespace with one veth to a bridge that lives in a namespace of its
own (nothing is added to the machine's own network), and its own address; every process runs
in its host with `ip netns exec` and reaches the others only by those addresses. The hosts
share the file system: it stands for the dataset's shared storage and the model baked into a
worker image. This kernel has no `netem`, so the faults are links taken down and processes
killed, one per ingest of the same dataset (its own collection), each while the job runs:

    worker-a link down   longer than a job and than the visibility timeout, then back
    worker-b SIGKILLed   the whole worker, pool included; a supervisor starts it again
    store link down      for 30 s while points are buffered (embedded, not yet indexed)
    broker restarted     the host's link down, Redis SIGKILLed, started again from its AOF

After each, the index is checked exact (chaos.measure: count = valid images, no duplicate
ids, every refused image failed with its reason). Exit 0 only when all four are exact and
Flower, on its own host, lists both workers and tasks each of them ran. Every namespace and
process is removed on the way out, on failure too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from pipeline.stack import die_with_parent
from producers.drills.chaos import Figures, arguments, measure, report, write_laced_dataset

HOSTS = ("broker", "store", "worker-a", "worker-b", "producer", "flower")
FAULTS = ("worker-a link down", "worker-b SIGKILLed", "store link down", "broker restarted")
SUBNET = "10.16.0"
REDIS_PORT, FLOWER_PORT = 6379, 5555
VISIBILITY_TIMEOUT_S = 30  # the least the settings allow: a lost job comes back in seconds
CLONE_NEWNET = 0x40000000


class ClusterError(Exception):
    """The harness could not build or run the cluster: one line, said as is."""


@dataclass
class ClusterFigures:
    hosts: int = len(HOSTS)
    images: int = 0  # summed over the ingests, one per fault
    faults: int = 0
    indexed: int = 0
    lost: int = 0
    duplicates: int = 0
    failed_with_reason: int = 0
    exact_after_fault: list[bool] = field(default_factory=list)
    flower_workers: int = 0
    time_to_exact_s: float = 0.0  # from the last fault's end to an exact index
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.faults == len(FAULTS)
            and all(self.exact_after_fault)
            and self.lost == 0
            and self.duplicates == 0
            and self.indexed + self.failed_with_reason == self.images
            and self.flower_workers == 2
        )

    def line(self) -> str:
        shown = {k: v for k, v in asdict(self).items() if k != "exact_after_fault"}
        fields = " ".join(f"{k}={v}" for k, v in shown.items())
        return f"cluster: {fields} -> {'OK' if self.ok else 'FAILED'}"


# --- hosts ---------------------------------------------------------------------------------


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip() or "no reason given").splitlines()[0]
        raise ClusterError(f"`ip {' '.join(args)}` failed: {reason}")


class Network:
    """Namespaces on a bridge; `with Network(tag) as net:` removes all of them on the way out."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.switch = f"{tag}-switch"
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS.index(host) + 1}"

    def _port(self, host: str) -> str:
        return f"{self.tag}p{HOSTS.index(host)}"  # the switch's end of the host's cable

    def __enter__(self) -> Network:
        if os.geteuid() != 0:
            raise ClusterError("network namespaces need root (run it as root, as CI does)")
        try:
            self._add(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for host in HOSTS:
                ns, port = self.ns(host), self._port(host)
                self._add(ns)
                ip("link", "add", port, "netns", self.switch, "type", "veth",
                   "peer", "name", "eth0", "netns", ns)  # fmt: skip
                ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
                ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.made.append(ns)

    def __exit__(self, *_: object) -> None:
        for ns in reversed(self.made):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def link(self, host: str, up: bool) -> None:
        ip("-n", self.switch, "link", "set", self._port(host), "up" if up else "down")

    def enter(self, host: str) -> None:
        """Move this process (single-threaded so far) onto `host`'s network."""
        fd = os.open(f"/run/netns/{self.ns(host)}", os.O_RDONLY)
        try:
            if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise ClusterError(f"setns into {host}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)


class Processes:
    """Every process the run starts, each in a session of its own (killed with its children)."""

    def __init__(self, net: Network, logs: Path) -> None:
        self.net, self.logs = net, logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, host: str, argv: list[str], env: dict[str, str]) -> None:
        with (self.logs / f"{name}.log").open("a") as out:
            self.running[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns(host), *argv],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self._signal([self.running.pop(name)], sig)

    def stop_all(self) -> None:
        """SIGTERM to every host's processes at once, SIGKILL to what is left after 20 s."""
        self._signal(list(self.running.values()), signal.SIGTERM)
        self.running.clear()

    @staticmethod
    def _signal(processes: list[subprocess.Popen], sig: int) -> None:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + 20
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the pool, whatever its leader did
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- the run -------------------------------------------------------------------------------


class Cluster:
    def __init__(self, net: Network, workdir: Path, layers: int) -> None:
        self.net, self.workdir = net, workdir
        self.password = os.urandom(12).hex()
        self.procs = Processes(net, workdir)
        broker = f"redis://:{self.password}@{net.address('broker')}:{REDIS_PORT}/0"
        base = {k: v for k, v in os.environ.items() if not k.startswith("MEDINDEX_")}
        self.env = base | {
            "MEDINDEX_REDIS_URL": broker,
            "MEDINDEX_MODEL": str(workdir / f"vit-{layers}"),
            "MEDINDEX_DEVICE": "cpu",
            "MEDINDEX_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "MEDINDEX_STORE_RETRY_BUDGET_S": "15",
            "MEDINDEX_FLOWER_PORT": str(FLOWER_PORT),
            "MEDINDEX_FLOWER_USER": "medindex",
            "MEDINDEX_FLOWER_PASSWORD": self.password,
        }

    def host_env(self, host: str) -> dict[str, str]:
        return self.env | {"MEDINDEX_HOME": str(self.workdir / host)}

    def start_broker(self) -> None:
        from pipeline.stack import redis_argv

        data = self.workdir / "broker"
        data.mkdir(exist_ok=True)
        conf = data / "redis.conf"
        conf.write_text(f"requirepass {self.password}\n")
        conf.chmod(0o600)
        argv = redis_argv(REDIS_PORT, data, self.net.address("broker"), conf)
        self.procs.start("redis", "broker", argv, self.host_env("broker"))

    def start_worker(self, host: str, role: str, concurrency: int | None = None) -> None:
        argv = [sys.executable, "-m", "pipeline.cli", "worker", "--role", role]
        argv += ["--name", f"{host}@%h"] + (
            ["--concurrency", str(concurrency)] if concurrency else []
        )
        self.procs.start(host, host, argv, self.host_env(host))

    def start_flower(self) -> None:
        from pipeline.settings import get_settings
        from pipeline.worker import flower_argv

        db = str(self.workdir / "flower" / "flower.db")
        Path(db).parent.mkdir(exist_ok=True)
        argv = [sys.executable, *flower_argv(get_settings(), self.net.address("flower"), db)]
        env = self.host_env("flower") | {"FLOWER_BASIC_AUTH": f"medindex:{self.password}"}
        self.procs.start("flower", "flower", argv, env)

    def flower(self, path: str) -> object:
        import httpx

        url = f"http://{self.net.address('flower')}:{FLOWER_PORT}{path}"
        return httpx.get(url, auth=("medindex", self.password), timeout=30).json()


def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` (a broker or link error counts as not yet) until true or time is up."""
    import redis

    from pipeline.errors import MedindexError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError, MedindexError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.2)


def run(n_valid: int, seed: int, workdir: Path, layers: int, store_down_s: float) -> ClusterFigures:
    with Network(f"mc{os.getpid() % 100000}") as net:
        net.enter("producer")  # this process is the producer: the ingest and the checks
        cluster = Cluster(net, workdir, layers)
        os.environ.update(cluster.host_env("producer"))
        try:
            return _run(cluster, n_valid, seed, layers, store_down_s)
        finally:
            cluster.procs.stop_all()


def _run(
    cluster: Cluster, n_valid: int, seed: int, layers: int, store_down_s: float
) -> ClusterFigures:
    from pipeline.progress import JobTracker, connect_redis
    from pipeline.random_models import build_random_vit
    from pipeline.settings import get_settings

    started = time.monotonic()
    build_random_vit(Path(cluster.env["MEDINDEX_MODEL"]), num_layers=layers)
    data, bad = write_laced_dataset(cluster.workdir / "data", n_valid, seed)
    per_ingest = len(datasets.load_dataset(str(data), split="train"))
    figures = ClusterFigures()
    settings = get_settings()
    net, procs = cluster.net, cluster.procs
    cluster.start_broker()
    until(lambda: bool(connect_redis(settings.broker_url)), 30, "the broker answering")
    tracker = JobTracker(connect_redis(settings.broker_url))
    cluster.start_worker("store", "store")
    cluster.start_worker("worker-a", "embed", 2)
    cluster.start_worker("worker-b", "embed", 1)
    cluster.start_flower()
    from pipeline.celery_app import app

    until(lambda: len(app.control.ping(timeout=2)) == 3, 180, "three workers answering")

    def worker_a_link() -> None:
        net.link("worker-a", up=False)
        time.sleep(VISIBILITY_TIMEOUT_S + 15)  # longer than a job and the visibility timeout
        net.link("worker-a", up=True)

    def worker_b_killed() -> None:
        procs.kill("worker-b")
        cluster.start_worker("worker-b", "embed", 1)

    def store_link() -> None:
        net.link("store", up=False)
        time.sleep(store_down_s)
        net.link("store", up=True)

    def broker_restarted() -> None:
        net.link("broker", up=False)
        procs.kill("redis")
        time.sleep(3)
        cluster.start_broker()
        net.link("broker", up=True)

    faults = (worker_a_link, worker_b_killed, store_link, broker_restarted)
    for number, (name, fault) in enumerate(zip(FAULTS, faults, strict=True)):
        job = Ingest(f"cluster{number}", data, bad, per_ingest)
        one, fault_ended = job.through(fault, name, tracker, settings)
        figures.faults += 1
        figures.images += one.images
        figures.time_to_exact_s = round(time.monotonic() - fault_ended, 1)
        exact = one.lost == one.duplicates == 0 and one.bad_reported == one.bad_tried
        figures.exact_after_fault.append(exact and one.indexed == one.valid)
        figures.indexed += one.indexed
        figures.lost += one.lost
        figures.duplicates += one.duplicates
        figures.failed_with_reason += one.bad_reported
    figures.flower_workers = _flower_workers_with_tasks(cluster)
    figures.seconds = round(time.monotonic() - started, 1)
    return figures


@dataclass
class Ingest:
    """One ingest of the dataset into a collection of its own, with a fault in the middle."""

    collection: str
    data: Path
    bad: dict[str, str]
    images: int

    def through(
        self, fault: Callable[[], None], name: str, tracker: object, settings: object
    ) -> tuple[Figures, float]:
        """The index's figures once exact, and when the fault ended."""
        from producers.ingest import IngestRequest, start_ingest
        from producers.spec import SourceSpec

        request = IngestRequest(SourceSpec(dataset=str(self.data)), self.collection)
        job_id, _, _ = start_ingest(request, settings)
        # Mid-job: jobs came back and points are buffered (embedded, not yet indexed).
        until(lambda: self._mid_job(tracker.progress(job_id)), 300, f"{name}: a job under way")
        fault()
        ended = time.monotonic()
        print(f"cluster: {name}", file=sys.stderr, flush=True)
        until(lambda: self._finished(tracker, job_id, settings), 900, f"{name}: the job ending")
        one = Figures(images=self.images, valid=self.images - len(self.bad))
        one.bad_tried = len(self.bad)
        until(lambda: self._measure(one, tracker, job_id, settings), 120, f"{name}: reading back")
        return one, ended

    @staticmethod
    def _mid_job(progress: object) -> bool:
        return progress.embedded >= 16 and progress.indexed < progress.total - 16

    @staticmethod
    def _finished(tracker: object, job_id: str, settings: object) -> bool:
        """The producer's own wait: it sends rows again after a stall (a message lost when a
        link died with it in flight). A broker error ends it early; `until` calls it again."""
        from producers.ingest import wait

        return wait(tracker, job_id, lambda _: None, timeout_s=600, settings=settings).finished

    def _measure(self, one: Figures, tracker: object, job_id: str, settings: object) -> bool:
        from pipeline.store import open_store

        measure(one, open_store(settings), tracker, job_id, self.bad, self.collection)
        return True


def _flower_workers_with_tasks(cluster: Cluster, timeout_s: float = 60) -> int:
    """Embed workers Flower lists (online now) that it also saw run tasks. A worker answers
    Flower's inspect broadcast within a second when idle, later when busy: asked until both
    answer or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = 0
        workers = cluster.flower("/api/workers?refresh=1")
        for host in ("worker-a", "worker-b"):
            names = [name for name in workers if name.startswith(f"{host}@")]
            tasks = [t for name in names for t in cluster.flower(f"/api/tasks?workername={name}")]
            seen += bool(names and tasks)
        if seen == 2 or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--store-down-s", type=float, default=30.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # cleans up on the way out
    try:
        with tempfile.TemporaryDirectory(prefix="medindex-cluster-") as workdir:
            figures = run(args.images, args.seed, Path(workdir), args.layers, args.store_down_s)
    except ClusterError as exc:
        print(f"cluster: FAILED: {exc}", flush=True)
        return 2
    return report(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
