"""The celery-batches base both batched tasks share."""

from __future__ import annotations

from typing import Any

from celery_batches import Batches


class RestartableBatches(Batches):
    abstract = True

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        # Called again when the consumer restarts after a lost broker connection, which clears
        # the worker's timers: forget the dead flush timer so that the next message starts a
        # new one, or buffered messages would never be flushed again.
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        return super().Strategy(task, app, consumer)
