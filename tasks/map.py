"""The embedding map of a collection version, made on a worker and kept in Redis."""

from __future__ import annotations

import logging

from pipeline.celery_app import app
from pipeline.errors import first_line
from pipeline.messages import MAP_TASK
from pipeline.projection import MapVersion, claim_map, keep_map, make_map, map_failed
from pipeline.settings import get_settings
from pipeline.store import open_reader
from tasks.worker_state import tracker

log = logging.getLogger(__name__)


@app.task(name=MAP_TASK)
def project_map(collection: str, made: float | None) -> None:
    redis = tracker().redis
    version = MapVersion(collection, made)
    claim_map(redis, version, again=True)  # the claim's time runs from now: it is being made
    try:
        keep_map(redis, make_map(open_reader(get_settings()), version))
    except Exception as exc:  # the page shows why instead of waiting for ever
        log.exception("embedding map of %s failed", collection)
        map_failed(redis, version, first_line(exc))
