"""The Celery application: broker, serialisation and delivery guarantees in one place; its
queues and routes come from the message contract (`pipeline.messages`), and `senders` sends
every message through it."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.exceptions import SecurityWarning
from celery.signals import after_setup_logger, after_setup_task_logger
from kombu import Exchange, Queue

from pipeline import logs
from pipeline.messages import EMBED_QUEUE, QUEUES, ROUTES, Senders
from pipeline.settings import Settings, get_settings

# Celery's warning to a worker run as root (a container's default): medindex never accepts
# pickle, the case it guards against (`accept_content` below).
warnings.filterwarnings("ignore", "You're running the worker with superuser", SecurityWarning)

TASK_MODULES = [
    "tasks.embed",
    "tasks.upsert",
    "tasks.store",
    "tasks.map",
    "tasks.control",
    "tasks.audit",
]


class ShortReprAMQP(AMQP):
    """Protocol 1 drops a message's `argsrepr`/`kwargsrepr` and puts a repr of the whole
    arguments in its events instead (a point batch's payloads: patient metadata, into Flower's
    task list and database). Given ones are kept: in the events sent and in the body, where the
    worker's own events read them."""

    def as_task_v1(
        self, *args: Any, argsrepr: str | None = None, kwargsrepr: str | None = None, **kw: Any
    ) -> Any:
        message = super().as_task_v1(*args, **kw)
        shown = {k: v for k, v in (("args", argsrepr), ("kwargs", kwargsrepr)) if v is not None}
        if message.sent_event is not None:
            message.sent_event.update(shown)
        message.body.update({f"{k}repr": v for k, v in shown.items()})
        return message


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # No result backend: tasks report through job state in Redis (pipeline.progress).
    app = Celery("medindex", broker=settings.broker_url, amqp=ShortReprAMQP)
    app.conf.update(
        include=TASK_MODULES,
        # Never pickle: vectors travel as msgpack binary, everything else as plain data.
        task_serializer="msgpack",
        # Protocol 1 keeps a queued job under 1 KB in Redis (about 900 bytes, against 1,250
        # with protocol 2's headers, which repeat the task id three times).
        task_protocol=1,
        accept_content=["msgpack", "json"],
        # Each queue its own exchange (the worker's banner shows it): sends go straight to the
        # queue (celery's anonymous exchange) either way.
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        task_default_queue=EMBED_QUEUE,
        task_routes={task: {"queue": queue} for task, queue in ROUTES.items()},
        # At-least-once: a job is acknowledged after it ran, and comes back if its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu looks for overdue messages every interval but scans only every throttle-th
            # time (100 s by default): a lost job would wait that long past the timeout.
            "unacked_restore_interval": min(10, settings.visibility_timeout_s // 6),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        # A message published while Redis restarts waits for it (about 50 s), not fails.
        task_publish_retry_policy={
            "max_retries": 30,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        task_ignore_result=True,
        # Flower and `medindex status` see every task (store queries are not tasks).
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=True,
    )
    return app


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger: logging.Logger, **_: object) -> None:
    logs.configure(logger, as_json=get_settings().log_json)
    # httpx logs every Qdrant request at INFO; keep worker logs about jobs.
    logging.getLogger("httpx").setLevel(logging.WARNING)


app = create_app()
senders = Senders(app)
