"""What a worker process opens once and reuses: created lazily, so always after the fork."""

from __future__ import annotations

import threading
from functools import cache

from pipeline.progress import JobTracker, connect_redis
from pipeline.settings import get_settings
from pipeline.store import Store, connect
from pipeline.writer import Writer


@cache
def tracker() -> JobTracker:
    return JobTracker(connect_redis(get_settings().broker_url))


_opening_store = threading.Lock()


def store() -> Store:
    """The store worker's writing thread and its query thread may ask at once: one opens it."""
    with _opening_store:
        return _opened_store()


@cache
def _opened_store() -> Store:
    return connect(get_settings())


@cache
def writer() -> Writer:
    settings = get_settings()
    return Writer(store(), settings.upsert_batch_size, settings.store_retry_budget_s)
