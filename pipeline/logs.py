"""Worker logs that name the job and the task on every line, as text or JSON lines."""

from __future__ import annotations

import logging
from contextvars import ContextVar

from celery import current_task
from celery.signals import task_prerun
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s [%(processName)s] job=%(job_id)s task=%(task_id)s "
    "%(name)s: %(message)s"
)
JSON_FIELDS = (
    "%(asctime)s %(levelname)s %(processName)s %(job_id)s %(task_id)s %(name)s %(message)s"
)

_job_id: ContextVar[str] = ContextVar("job_id", default="-")
# A call that carries several messages (celery-batches) runs as one task: each message's own
# task id is bound with its job, so the lines about a job name the message that brought it.
_task_id: ContextVar[str | None] = ContextVar("task_id", default=None)


def bind_job(job_id: str, task_id: str | None = None) -> None:
    """Name the job the current task works on (and the message's task id, where one call
    carries several), for every log line until the next bind or task."""
    _job_id.set(job_id)
    _task_id.set(task_id)


@task_prerun.connect
def _forget_previous_job(**_: object) -> None:
    _job_id.set("-")
    _task_id.set(None)


class JobContext(logging.Filter):
    """Adds `job_id` and `task_id` to every record ("-" outside a task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        record.task_id = _task_id.get() or (task.request.id if task else None) or "-"
        record.job_id = _job_id.get() if task else "-"
        return True


def configure(logger: logging.Logger, as_json: bool) -> None:
    """Give every handler of a worker's logger the job context and the chosen format."""
    formatter = JsonFormatter(JSON_FIELDS) if as_json else logging.Formatter(TEXT_FORMAT)
    for handler in logger.handlers:
        handler.addFilter(JobContext())
        handler.setFormatter(formatter)
