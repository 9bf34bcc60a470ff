"""The store: the only code that talks to Qdrant, one interface over two backends.

    base          the protocols: Reader (queries), Manager (collections), PointWriter (upsert)
    types         hits and the typed requests (SearchRequest, RecommendRequest)
    errors        StoreError: a refusal or an outage, with its kind
    filters       Qdrant's JSON filters and payload selectors, parsed by qdrant-client's models
    spec, points  what both backends share: a collection's spec; points in, hits out
    edge          Qdrant Edge, the real engine in-process (the embedded default), with
                  edge_filters (the filters in Edge's types) and edge_build (the index child)
    server        qdrant-client against a Qdrant server (production), with layout (how a
                  collection is laid out on a cluster)
    remote        the embedded store across the broker: the proxy, the store worker's answer

Here: the chooser. A server is opened directly by whoever needs it; the embedded folder only by
the store worker (`connect`), everyone else reaching it through the broker (`open_store`,
`open_reader`).
"""

from __future__ import annotations

import time

from pipeline.settings import Settings
from pipeline.store.base import Admin, Manager, PointWriter, Reader, Store
from pipeline.store.errors import StoreError
from pipeline.store.types import Hit, NeighbourRequest, RecommendRequest, SearchRequest

__all__ = [
    "Admin",
    "Hit",
    "Manager",
    "NeighbourRequest",
    "PointWriter",
    "Reader",
    "RecommendRequest",
    "SearchRequest",
    "Store",
    "StoreError",
    "connect",
    "finish_bulk",
    "open_reader",
    "open_store",
]

# The backends and the proxy are imported by the function that picks them: importing this
# package (a producer, `medindex status`, the writer, the search page) costs neither
# qdrant-client (about half a second, which both backends load for their filters) nor the
# Celery app, and a process pays only for the way it reaches the store.


def connect(settings: Settings) -> Store:
    """The store this process may open directly: a server, or the embedded folder (which
    only the store worker opens; everyone else calls it through the broker)."""
    if settings.store_backend == "server":
        from pipeline.store.server import ServerStore

        return ServerStore.connect(settings)
    from pipeline.store.edge import EdgeStore

    layout = settings.qdrant_quantization, settings.qdrant_on_disk
    return EdgeStore(
        settings.embedded_store_path, *layout, settings.index_after_points,
        flush_s=settings.store_flush_s,
    )  # fmt: skip


def open_store(settings: Settings) -> Admin:
    """Queries and management: for producers (ingest, reindex, rollback, collections)."""
    if settings.store_backend == "server":
        return connect(settings)
    from pipeline.store.remote import RemoteAdmin

    return RemoteAdmin(settings)


def open_reader(settings: Settings) -> Reader:
    """Queries only: for search processes."""
    if settings.store_backend == "server":
        return connect(settings)
    from pipeline.store.remote import RemoteReader

    return RemoteReader(settings)


def finish_bulk(store: Manager, name: str, timeout_s: float = 3600, poll_s: float = 0.5) -> None:
    """Build the index deferred during a bulk load and wait until it is ready: a loop of short
    calls, so that whoever owns the store keeps serving in between."""
    deadline = time.monotonic() + timeout_s
    store.start_index(name)
    while not store.index_ready(name):
        if time.monotonic() > deadline:
            raise StoreError(f"{name!r} not indexed after {timeout_s:.0f}s")
        time.sleep(poll_s)
