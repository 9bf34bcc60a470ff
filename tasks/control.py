"""What a worker answers about itself when a producer asks (Celery remote control): the
fingerprint of its de-identification key, so that a DICOM ingest whose workers hold another key
(or none) is refused before it enqueues, instead of every image failing."""

from __future__ import annotations

from celery.worker.control import inspect_command

from pipeline.messages import DEID_COMMAND
from pipeline.settings import get_settings


@inspect_command(name=DEID_COMMAND)
def deid_fingerprint(state: object) -> dict:
    consumer = state.consumer.task_consumer
    queues = [queue.name for queue in consumer.queues] if consumer else []
    return {"fingerprint": get_settings().deid_fingerprint(), "queues": queues}
