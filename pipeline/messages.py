"""The message contract: every task's name, the queue it travels on, and the one function that
sends it.

Celery's queues and routes are built from `QUEUES` and `ROUTES`, so no send names a queue.
Each sender states once what Flower shows and keeps of its messages (`argsrepr`/`kwargsrepr`):
never payloads, filters, point ids or specs.

No import cycle: this module imports neither the Celery app nor the tasks. It holds plain names
and `Senders`, a small class bound to whatever app it is given. `pipeline.celery_app` builds
the app from `QUEUES` and `ROUTES` and exposes `senders = Senders(app)`; the tasks register
under the names here; producers, tasks and search_api send only through those senders.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from celery import Celery
    from kombu import Producer
    from redis import Redis

    from pipeline.schemas import EmbedJob, PointBatch

EMBED_QUEUE = "embed"
UPSERT_QUEUE = "upsert"
STORE_QUEUE = "store"
QUEUES = (EMBED_QUEUE, UPSERT_QUEUE, STORE_QUEUE)
UNACKED = "unacked"  # kombu's Redis transport keeps delivered, unacknowledged messages here
# Each message of a job names the job and its task in its headers, so that a producer can tell
# whether any of them is still out without reading the bodies (`jobs_in_flight`). Not "task":
# a worker takes a message with that header for Celery's protocol 2.
JOB_HEADER = "medindex_job"
TASK_HEADER = "medindex_task"

EMBED_TASK = "medindex.embed"
UPSERT_TASK = "medindex.upsert"
STORE_MANAGE_TASK = "medindex.store_manage"
MAP_TASK = "medindex.project_map"
# The embedded store's queries are not Celery tasks: they wait on a list of their own, served by
# a thread of the store worker's process beside its writes (tasks/store.py), so that a search
# never waits behind a write call; and Flower never lists them (hundreds a page session would
# bury an ingest's tasks).
STORE_QUERY_LIST = "medindex:store:queries"
# A remote control command (not a task): each worker answers its MEDINDEX_DEID_KEY's
# fingerprint and the queues it consumes (tasks/control.py).
DEID_COMMAND = "medindex_deid_fingerprint"
AUDIT_TASK = "medindex.audit_shard"

ROUTES = {
    EMBED_TASK: EMBED_QUEUE,
    UPSERT_TASK: UPSERT_QUEUE,
    STORE_MANAGE_TASK: STORE_QUEUE,
    # The search page's embedding maps: minutes of CPU, on the embed workers.
    MAP_TASK: EMBED_QUEUE,
    # An audit's shards of neighbour queries: the embed workers ask the store, as maps do.
    AUDIT_TASK: EMBED_QUEUE,
}


class Senders:
    """Every message medindex sends, through the app it is bound to."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def connection(self) -> AbstractContextManager[Producer]:
        """One connection for many sends (pass it on as `producer`)."""
        return self.app.producer_or_acquire()

    def send_embed_job(
        self,
        job: EmbedJob,
        producer: Producer | None = None,
        queue: str | None = None,
        countdown: float | None = None,
        retries: int = 0,
    ) -> None:
        """Flower shows the job and its rows. `queue`: another than the route's (the bench's
        probe); `countdown` and `retries`: a try sent again, later."""
        self.app.send_task(
            EMBED_TASK,
            args=(job.model_dump(exclude_defaults=True),),  # defaults stay out: small messages
            argsrepr=f"job {job.job_id} rows {job.rows[0]}-{job.rows[-1]}",
            headers=_job_headers(job.job_id, EMBED_TASK),
            producer=producer,
            queue=queue,  # None: the route's
            countdown=countdown,
            retries=retries,
        )

    def send_points(
        self,
        batch: PointBatch,
        ends_job: bool = False,
        parked: bool = False,
        producer: Producer | None = None,
        task_id: str | None = None,
        retries: int = 0,
    ) -> None:
        """Flower shows the job and how many points, never the payloads (patient metadata).
        `ends_job`: the job's last points (the store worker writes at once); `parked`: points
        kept after their writes failed, sent again; `task_id` and `retries`: a failed write's
        message sent again."""
        kind = "parked points" if parked else "points"
        retry = f", retry {retries}" if retries else ""
        self.app.send_task(
            UPSERT_TASK,
            kwargs={"batch": batch.model_dump(), "ends_job": ends_job},
            argsrepr="()",
            kwargsrepr=f"job {batch.job_id}: {len(batch)} {kind}{retry}",
            headers=_job_headers(batch.job_id, UPSERT_TASK),
            producer=producer,
            task_id=task_id,
            retries=retries,
        )

    def send_store_call(self, task: str, call: dict, expires: float) -> None:
        """A call to the embedded store (`pipeline.store.remote`). Flower shows the method and
        the collection it names: never filters, point ids or specs."""
        args = call["args"]
        self.app.send_task(
            task,
            kwargs=call,
            expires=expires,
            argsrepr="()",
            kwargsrepr=f"{call['method']}({args[0]!r})" if args else f"{call['method']}()",
        )

    def send_map_request(self, collection: str, made: float | None) -> None:
        """The map of one collection version (`pipeline.projection.MapVersion`). Flower shows
        the version: a collection's name and when it was made."""
        kwargs = {"collection": collection, "made": made}
        self.app.send_task(MAP_TASK, kwargs=kwargs, argsrepr="()", kwargsrepr=repr(kwargs))

    def worker_deid_fingerprints(self, timeout_s: float = 1.0) -> dict[str, dict]:
        """worker -> {"fingerprint", "queues"}, from every worker answering within `timeout_s`."""
        replies = self.app.control.broadcast(DEID_COMMAND, reply=True, timeout=timeout_s)
        return {worker: answer for reply in replies for worker, answer in reply.items()}

    def send_audit_shard(
        self,
        job_id: str,
        plan: dict,
        shard: int,
        rows: list[int],
        ids: list[str],
        producer: Producer | None = None,
        countdown: float | None = None,
        retries: int = 0,
    ) -> None:
        """One shard of an audit (`pipeline.neighbours`). Flower shows the audit and the
        shard's rows, never point ids. `countdown` and `retries`: a try sent again, later."""
        self.app.send_task(
            AUDIT_TASK,
            kwargs={"job_id": job_id, "plan": plan, "shard": shard, "rows": rows, "ids": ids},
            argsrepr="()",
            kwargsrepr=f"audit {job_id} shard {shard}: rows {rows[0]}-{rows[-1]}",
            headers=_job_headers(job_id, AUDIT_TASK),
            producer=producer,
            countdown=countdown,
            retries=retries,
        )


def _job_headers(job_id: str, task: str) -> dict[str, str]:
    return {JOB_HEADER: job_id, TASK_HEADER: task}


def send_store_query(redis: Redis, call: dict, expires: float) -> None:
    """A query to the embedded store (`pipeline.store.remote`). The list lasts `expires` past
    the last query sent: queries no store worker takes do not pile up."""
    with redis.pipeline() as pipe:
        pipe.rpush(STORE_QUERY_LIST, json.dumps(call))
        pipe.expire(STORE_QUERY_LIST, math.ceil(expires))
        pipe.execute()


def messages_out(redis: Redis) -> int:
    """How many messages of every job are queued (embed, upsert) or delivered and not yet
    acknowledged: three lengths, where `messages_in_flight` reads every message (about 10 MB
    at a full window of 256 jobs and their points, each time)."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(EMBED_QUEUE)
    pipe.llen(UPSERT_QUEUE)
    pipe.hlen(UNACKED)
    return sum(pipe.execute())


def jobs_in_flight(redis: Redis) -> set[str]:
    """The jobs that have a message queued (embed, upsert) or delivered and not yet
    acknowledged (a worker's prefetched or buffered messages): those messages will be handled,
    or come back after the visibility timeout, by themselves."""
    return set(messages_in_flight(redis))


def messages_in_flight(redis: Redis, task: str | None = None) -> Counter[str]:
    """How many messages of each job (of one `task`, or all) are queued (embed, upsert) or
    delivered and not yet acknowledged.

    Read from kombu's Redis layout: queues are lists of JSON envelopes, the unacknowledged ones
    a hash of [envelope, exchange, routing key]. A message without the job header (a map
    request, or one sent by an older producer) belongs to no job here."""
    envelopes = [json.loads(raw) for queue in (EMBED_QUEUE, UPSERT_QUEUE)
                 for raw in redis.lrange(queue, 0, -1)]  # fmt: skip
    envelopes += [json.loads(raw)[0] for raw in redis.hvals(UNACKED)]
    headers = [e.get("headers") or {} for e in envelopes]
    return Counter(
        job for h in headers if (job := h.get(JOB_HEADER)) and task in (None, h.get(TASK_HEADER))
    )
