"""The `edge` backend: Qdrant Edge, the real Qdrant engine in-process (the embedded default).

Edge has shards, not collections: a collection is a folder holding its shard and `meta.json`
(the spec it records, written last, so a half-made collection does not exist); aliases live in
one `aliases.json` replaced by rename, read on every call. One process may open a shard, so
the store worker owns the folder (a lock on it says so) and everyone else calls it through the
broker. Edge has no background optimiser and `optimize()` holds its process until done: a
collection's HNSW index is built on a copy of its shard by a child process and swapped in, while
the live shard goes on serving searches and writes (`pipeline.store.edge_index`). A build
starts when `index_after_points` points are outside the index, or when asked (`start_index`:
an ingest's end, a reindex's bulk load); a thread of the store drives it forward. Points
outside the index are searched exactly (payload indexes narrow a filtered search first).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, wraps
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as edge

from pipeline.errors import MedindexError, first_line
from pipeline.store.base import Store
from pipeline.store.edge_build import (
    HNSW_M,
    RESCORE_OVERSAMPLING,
    builder_argv,
    search_params,
    vector_config,
)
from pipeline.store.edge_filters import edge_filter, edge_payload_selector
from pipeline.store.edge_index import (
    CATCH_UP_CHUNK,
    LIVE_SHARD,
    Build,
    catch_up,
    copy_missing_indexes,
    copy_shard,
    new_shard_folder,
    remove_leftovers,
    unindexed,
)
from pipeline.store.errors import StoreError
from pipeline.store.filters import parse_filter, parse_payload_selector
from pipeline.store.points import check_finite, neighbours, range_end, to_hit
from pipeline.store.spec import added_indexes, check_same_vectors, payload_indexes, schema_update
from pipeline.store.types import Hit, NeighbourRequest, RecommendRequest, SearchRequest

log = logging.getLogger(__name__)

GROUP_READS = 5  # the server's bound: reads to find groups, and again to fill them
# Searches ahead of writes: a write goes to Edge in slices, and before each one it waits, at
# most READ_PRIORITY_S, for the searches running on other threads (the store worker's query
# thread) to end, so that a search does not share the CPU with a write.
WRITE_SLICE = 250
READ_PRIORITY_S = 0.05
# A write is acknowledged once Edge's write-ahead log holds it: a killed store worker loses
# nothing (the log is replayed when the shard opens). The segments are flushed to disk at most
# every FLUSH_S seconds of writing, and by the maintenance thread once a collection is quiet:
# a power cut may lose that last interval, as with the Qdrant server (`flush_interval_sec`)
# or Redis' `appendfsync everysec`. A flush per 1,000-point write was a quarter of its time.
FLUSH_S = 1.0
INDEX_POLL_S = 0.5  # how often the maintenance thread looks at the builds
RETIRE_S = 5.0  # a replaced shard stays open this long: a search caught on it finishes
CATCH_UP_ROUNDS = 5  # catch-up rounds beside the writes before the last one, which holds them
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


def _write_json(path: Path, value: Any) -> None:
    """Replaced whole, by rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with tmp.open("w") as out:
        json.dump(value, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; elsewhere none


def _return_freed_memory() -> None:
    """What glibc holds freed handed back to the system (`malloc_trim`): a replaced shard's
    memory stays otherwise in the arenas of the threads that used it, counted in the store
    worker's RSS (measured 15 s after a swap at 1,000,000 points: 967 of its 2,710 MiB
    anonymous)."""
    if trim := _malloc_trim():
        trim(0)


def _point_id(value: str) -> str | int:
    """Edge takes unsigned ints or UUIDs; ids travel as text."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _id_text(value: str) -> str:
    """A point id as Edge gives it back (a canonical UUID, or an integer)."""
    return str(_point_id(value)) if str(value).isdigit() else str(uuid.UUID(value))


def _group_values(payload: dict, key: str) -> list | None:
    """The group ids a point belongs to, as the server computes them: a string or an integer
    (or a list of them); a point with any other value joins no group."""
    value: Any = payload
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    values = value if isinstance(value, list) else [value]
    if not values or any(type(v) not in (str, int) for v in values):
        return None
    return list(dict.fromkeys(values))


def _by_type(values: list) -> list[list]:
    """Group values as a filter takes them: strings and integers in separate lists."""
    kinds = [[v for v in values if isinstance(v, kind)] for kind in (str, int)]
    return [kind for kind in kinds if kind]


class _Grouping:
    """Hits gathered into groups in score order, as the server's aggregator gathers them:
    reads come in falling score (each read's candidates are a subset of the one before), so
    a group's place is its first hit's and its hits are its best."""

    def __init__(self, key: str, limit: int, size: int) -> None:
        self.key, self.limit, self.size = key, limit, size
        self.page = limit * size
        self.groups: dict[Any, list[Hit]] = {}
        self.seen: list[str] = []  # ids read so far: never read again

    def add(self, points: list) -> None:
        for point in points:
            self.seen.append(str(point.id))
            for value in _group_values(point.payload or {}, self.key) or ():
                hits = self.groups.setdefault(value, [])
                if len(hits) < self.size:
                    hits.append(to_hit(point))

    def best(self) -> list[tuple[Any, list[Hit]]]:
        return list(self.groups.items())[: self.limit]

    @property
    def complete(self) -> bool:
        best = self.best()
        return len(best) == self.limit and all(len(hits) == self.size for _, hits in best)

    def outside_full_groups(self) -> list[dict]:
        full = [value for value, hits in self.groups.items() if len(hits) == self.size]
        return [{"key": self.key, "match": {"except": values}} for values in _by_type(full)]

    def within_open_groups(self) -> list[dict] | None:
        """None: no group among the best is still open, nothing to fill."""
        open_ = [value for value, hits in self.best() if len(hits) < self.size]
        if not open_:
            return None
        return [{"should": [{"key": self.key, "match": {"any": v}} for v in _by_type(open_)]}]

    def read_filter(self, caller: dict | None, where: list[dict]) -> dict:
        """The caller's filter, a value to group by, `where`, and no hit read before."""
        must = [*([caller] if caller else []), *where]
        excluded = [
            {"is_empty": {"key": self.key}},
            *([{"has_id": self.seen}] if self.seen else []),
        ]
        return {"must": must, "must_not": excluded} if must else {"must_not": excluded}


def _read(method: Callable) -> Callable:
    """A query that writes give way to (see READ_PRIORITY_S)."""

    @wraps(method)
    def read(self: EdgeStore, *args: Any, **kwargs: Any) -> Any:
        with self._reading():
            return method(self, *args, **kwargs)

    return read


def _serialised(method: Callable) -> Callable:
    """Run under the index lock: a build's copy and its swap never fall inside a write or a
    change of the collection (the swap would lose it)."""

    @wraps(method)
    def serialised(self: EdgeStore, *args: Any, **kwargs: Any) -> Any:
        with self._index_lock:
            return method(self, *args, **kwargs)

    return serialised


def _noting_writes(upsert: Callable) -> Callable:
    """The write, then its ids noted for a build in progress (caught up before its swap) and
    counted towards the next build, in one step under the index lock."""

    @wraps(upsert)
    def noted(
        self: EdgeStore,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict],
    ) -> None:
        with self._index_lock:
            upsert(self, name, ids, vectors, payloads)
            self._note_writes(self._resolve(name), ids)

    return noted


class EdgeStore(Store):
    def __init__(
        self,
        root: Path,
        quantization: str = "none",
        on_disk: bool = False,
        index_after_points: int = 20_000,
        index_poll_s: float = INDEX_POLL_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        """`quantization` and `on_disk`: the layout of the collections it creates (recorded
        in each one's metadata under `layout`; a collection keeps its own).
        `index_after_points`: points outside a collection's index that start a build;
        `flush_s`: the longest a written collection goes unflushed (0: every write)."""
        self.root = root
        self.layout = {
            "quantization": quantization,
            "on_disk": on_disk,
            "rescore_oversampling": RESCORE_OVERSAMPLING,
        }
        self.description = f"embedded store {root}"
        refuse_local_mode(root)
        (root / "collections").mkdir(parents=True, exist_ok=True)
        self._lock = (root / ".lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise StoreError(f"embedded store {root} is in use by another process") from exc
        self._shards: dict[str, edge.EdgeShard] = {}
        self._shards_lock = threading.Lock()  # one opener of a shard: a second load fails
        self._reads = 0  # searches running on other threads (see READ_PRIORITY_S)
        self._reads_lock = threading.Lock()
        self._no_reads = threading.Event()
        self._no_reads.set()
        self._index_after_points = index_after_points
        self._index_lock = threading.RLock()
        self._builds: dict[str, Build] = {}
        self._wanted: set[str] = set()  # builds asked for, started by the maintenance thread
        self._failed: dict[str, str] = {}  # a failed build's reason, for `index_ready`
        self._unindexed: dict[str, int] = {}  # points outside the index, counted by writes
        self._retired: list[tuple[float, edge.EdgeShard, Path]] = []  # (close at, shard, folder)
        self._flush_s = flush_s
        self._unflushed: dict[str, float] = {}  # collection -> its first unflushed write's time
        self._wanted.update(self._tidy_builds())
        self._stopping = threading.Event()
        self._maintainer = threading.Thread(
            target=self._maintain, args=(index_poll_s,), name="edge-index", daemon=True
        )
        self._maintainer.start()

    # --- management -----------------------------------------------------------------------

    @_serialised
    def ensure_collection(self, name: str, spec: dict, bulk: bool = False) -> None:
        if self._exists(name) or name in self.aliases():  # checked on its record only
            name = self._resolve(name)
            check_same_vectors(name, self._meta(name), spec)
            self._add_fields(name, spec)
            return
        folder = self._folder(name)
        indexes = payload_indexes(spec)
        with self._errors():
            shutil.rmtree(folder, ignore_errors=True)  # what a crash mid-creation left
            layout = self.layout["quantization"], self.layout["on_disk"]
            config = vector_config(spec["dim"], 0 if bulk else HNSW_M, *layout)
            shard = edge.EdgeShard.create(str(folder / "shard"), config)
            for field, kind in indexes.items():  # before the points: Qdrant's advice
                shard.update(_field_index(field, kind))
            shard.close()  # opened again by its first use
            # No HNSW yet; a bulk load's is built once, by its `finish_bulk`.
            meta = {"dim": spec["dim"], "distance": "Cosine", "indexed": False, "bulk": bulk}
            made = {"created_at": time.time(), "layout": self.layout}
            _write_json(folder / "meta.json", meta | {"metadata": spec | made})
        log.info("created collection %s (%d-d cosine) in %s", name, spec["dim"], self.description)

    def _add_fields(self, name: str, spec: dict) -> None:
        recorded = self._meta(name)["metadata"]
        added = added_indexes(recorded, spec)
        if added:
            shard = self._shard(name)
            with self._errors():
                for field, kind in added.items():
                    shard.update(_field_index(field, kind))
        if update := schema_update(recorded, spec):
            self.set_metadata(name, update)

    @_serialised
    def start_index(self, name: str) -> None:
        """A build of the points outside the index (none: nothing to do), in the background;
        the collection serves searches and writes meanwhile."""
        self._want(self._resolve(name))

    @_serialised
    def index_ready(self, name: str) -> bool:
        name = self._resolve(name)
        if name in self._failed:
            raise StoreError(self._failed.pop(name))
        if name in self._builds or name in self._wanted:
            return False
        meta = self._meta(name)
        if meta["indexed"] and not meta.get("index_wanted"):
            return True
        self._want(name)  # asked for before this process started: again
        return False

    def set_metadata(self, name: str, metadata: dict) -> None:
        name = self._resolve(name)
        self._update_meta(name, metadata=self._meta(name)["metadata"] | metadata)

    @_serialised
    def delete_collection(self, name: str) -> None:
        if not self._exists(name):
            raise StoreError(f"collection {name!r} does not exist")
        self._abandon_build(name)
        self._wanted.discard(name)
        self._unindexed.pop(name, None)
        self._unflushed.pop(name, None)
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        aliases = self.aliases()
        kept = {alias: target for alias, target in aliases.items() if target != name}
        if kept != aliases:
            _write_json(self.root / "aliases.json", kept)
        gone = self.root / f".deleted-{name}-{uuid.uuid4().hex}"
        os.replace(self._folder(name), gone)  # gone in one step, then cleaned up
        shutil.rmtree(gone, ignore_errors=True)

    def switch_alias(self, alias: str, collection: str) -> None:
        if not self._exists(collection):
            raise StoreError(f"collection {collection!r} does not exist")
        if self._exists(alias):
            raise StoreError(f"alias {alias!r} is the name of a collection")
        _check_name(alias)
        _write_json(self.root / "aliases.json", self.aliases() | {alias: collection})

    # --- writes ---------------------------------------------------------------------------

    @_noting_writes
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        check_finite(vectors)
        # Rows handed over as buffers: Edge reads their floats without a Python list each.
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        shard = self._shard(name)
        with self._errors():
            for start in range(0, len(ids), WRITE_SLICE):
                self._no_reads.wait(READ_PRIORITY_S)
                stop = start + WRITE_SLICE
                points = [
                    edge.Point(_point_id(i), memoryview(v), p)
                    for i, v, p in zip(
                        ids[start:stop], rows[start:stop], payloads[start:stop], strict=True
                    )
                ]
                shard.update(edge.UpdateOperation.upsert_points(points))
            self._written(self._resolve(name), shard)

    def _written(self, name: str, shard: edge.EdgeShard) -> None:
        """After a write (held in the write-ahead log): the shard flushed if it has gone
        `flush_s` unflushed; otherwise the maintenance thread flushes it in time."""
        first = self._unflushed.setdefault(name, time.monotonic())
        if time.monotonic() - first >= self._flush_s:
            shard.flush()
            del self._unflushed[name]

    def _flush_due(self, everything: bool = False) -> None:
        """The maintenance thread's part: collections written `flush_s` ago and not since
        flushed, flushed (under the index lock: never beside a write to them). One that fails
        stays due: its points are in the write-ahead log meanwhile."""
        with self._index_lock:
            for name, first in list(self._unflushed.items()):
                if everything or time.monotonic() - first >= self._flush_s:
                    try:
                        if shard := self._shards.get(name):
                            shard.flush()
                        del self._unflushed[name]
                    except Exception as exc:
                        log.warning("%s: flush failed (tried again): %s", name, first_line(exc))

    # --- reads ----------------------------------------------------------------------------

    def collections(self) -> list[str]:
        folders = (self.root / "collections").iterdir()
        return sorted(f.name for f in folders if (f / "meta.json").is_file())

    def aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @_read
    def collection_info(self, name: str) -> dict:
        meta = self._meta(self._resolve(name))
        with self._errors():
            info = self._shard(name).info()
        return {
            "name": name,
            "dim": meta["dim"],
            "distance": meta["distance"],
            "points": info.points_count,
            "indexed_points": info.points_count - unindexed(info),
            "unindexed_points": unindexed(info),
            "metadata": meta["metadata"],
            # The indexes the engine holds (PayloadSchemaType.Keyword -> "keyword").
            "payload_indexes": {
                field: str(index.data_type).rpartition(".")[2].lower()
                for field, index in info.payload_schema.items()
            },
        }

    def metadata(self, name: str) -> dict:
        return self._meta(self._resolve(name))["metadata"]

    @_read
    def search(self, name: str, request: SearchRequest) -> list[Hit]:
        query = _query(request, self._params(name, request.hnsw_ef))
        shard = self._shard(name)
        with self._errors():
            return [to_hit(p) for p in shard.query(query)]

    @_read
    def search_batch(self, name: str, requests: list[SearchRequest]) -> list[list[Hit]]:
        quantization = self._layout(name)["quantization"]
        queries = [_query(r, search_params(quantization, r.hnsw_ef)) for r in requests]
        shard = self._shard(name)
        with self._errors():
            results = shard.query_batch(edge.QueryBatchRequest(queries))
        return [[to_hit(p) for p in points] for points in results]

    @_read
    def neighbours(self, name: str, requests: list[NeighbourRequest]) -> list[list[Hit]]:
        return neighbours(self, name, requests)

    @_read
    def groups(
        self, name: str, request: SearchRequest, group_by: str, group_size: int = 1
    ) -> list[dict]:
        """Edge's binding has no query_groups: the server's own algorithm over plain queries.
        Each read takes the next `limit * group_size` hits outside the full groups (and the
        hits already read); `GROUP_READS` reads look for groups, as many again fill the best
        ones. Bounded like the server's, whatever the collection's size: with fewer values
        than `limit`, a read or two, and the groups found."""
        shard, params = self._shard(name), self._params(name, request.hnsw_ef)
        found = _Grouping(group_by, request.limit, group_size)
        for narrowing in (found.outside_full_groups, found.within_open_groups):
            for _ in range(GROUP_READS):
                if found.complete or (where := narrowing()) is None:
                    break
                read = request.model_copy(  # whole payloads: a hit's groups are read there
                    update={
                        "filter": found.read_filter(request.filter, where),
                        "limit": found.page,
                        "with_payload": True,
                    }
                )
                with self._errors():
                    points = shard.query(_query(read, params))
                if not points:
                    break
                found.add(points)
        groups = found.best()
        if request.with_payload is not True:
            groups = self._payloads_as_asked(shard, groups, request.with_payload)
        return [{"group": value, "hits": hits} for value, hits in groups]

    def _payloads_as_asked(
        self, shard: edge.EdgeShard, groups: list[tuple[Any, list[Hit]]], selector: Any
    ) -> list[tuple[Any, list[Hit]]]:
        """The groups' hits with the payload the request selects, read again by id."""
        ids = [_point_id(hit["id"]) for _, hits in groups for hit in hits]
        with_payload = edge_payload_selector(parse_payload_selector(selector))
        with self._errors():
            records = shard.retrieve(ids, with_payload, False)
        payloads = {str(r.id): r.payload or {} for r in records}
        return [
            (value, [hit | {"payload": payloads[hit["id"]]} for hit in hits])
            for value, hits in groups
        ]

    @_read
    def recommend(self, name: str, request: RecommendRequest) -> list[Hit]:
        examples = [*request.positive, *request.negative]
        found = {p["id"]: p["vector"] for p in self.retrieve(name, examples, with_vectors=True)}
        try:
            vectors = [found[_id_text(i)] for i in examples]
        except KeyError as exc:
            raise StoreError(f"no point {exc.args[0]!r} in collection {name!r}") from exc
        dim, positives = len(vectors[0]), len(request.positive)
        vector = recommend_vector(
            np.array(vectors[:positives]), np.array(vectors[positives:]).reshape(-1, dim)
        )
        without = {"must_not": [{"has_id": examples}]}
        where = {"must": [request.filter], **without} if request.filter else without
        options = request.model_dump(exclude={"positive", "negative", "filter"})
        return self.search(name, SearchRequest(vector=vector.tolist(), filter=where, **options))

    @_read
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        shard = self._shard(name)
        with self._errors():
            points = shard.retrieve([_point_id(i) for i in ids], True, with_vectors)
        return [to_hit(p) for p in points]

    @_read
    def count(self, name: str, filter: dict | None = None) -> int:
        request = edge.CountRequest(exact=True, filter=edge_filter(parse_filter(filter)))
        shard = self._shard(name)
        with self._errors():
            return shard.count(request)

    @_read
    def facet(
        self, name: str, key: str, filter: dict | None = None, limit: int = 10_000
    ) -> list[dict]:
        request = edge.FacetRequest(key, limit, True, edge_filter(parse_filter(filter)))
        shard = self._shard(name)
        with self._errors():
            hits = shard.facet(request).hits
        ordered = sorted(hits, key=lambda hit: (-hit.count, str(hit.value)))
        return [{"value": hit.value, "count": hit.count} for hit in ordered]

    @_read
    def value_range(self, name: str, key: str, filter: dict | None = None) -> list[float] | None:
        ends = []  # the first point in each order
        shard = self._shard(name)
        for direction in (edge.Direction.Asc, edge.Direction.Desc):
            request = edge.ScrollRequest(
                limit=1,
                filter=edge_filter(parse_filter(filter)),
                with_payload=True,
                with_vector=False,
                order_by=edge.OrderBy(key, direction),
            )
            with self._errors():
                points, _ = shard.scroll(request)
            end = range_end(points, key, lowest=direction == edge.Direction.Asc)
            if end is None:
                return None
            ends.append(end)
        return ends

    @_read
    def scroll(
        self, name: str, filter: dict | None = None, limit: int = 10, offset: str | None = None
    ) -> dict:
        request = edge.ScrollRequest(
            offset=None if offset is None else _point_id(offset),
            limit=limit,
            filter=edge_filter(parse_filter(filter)),
            with_payload=True,
            with_vector=False,
        )
        shard = self._shard(name)
        with self._errors():
            points, next_offset = shard.scroll(request)
        return {
            "points": [to_hit(p) for p in points],
            "next_offset": None if next_offset is None else str(next_offset),
        }

    def ping(self) -> None:
        if not (self.root / "collections").is_dir():
            raise StoreError(f"{self.description} is gone", transient=True)

    def close(self) -> None:
        self._stopping.set()
        self._maintainer.join()
        for name in list(self._builds):
            self._abandon_build(name)  # removed now; a crash's copy at the next open
        self._close_retired(everything=True)
        self._flush_due(everything=True)
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._lock.close()

    # --- index maintenance ----------------------------------------------------------------

    def _want(self, name: str) -> None:
        """A build asked for, recorded in its meta.json: a crash before its swap (the store
        worker killed) leaves it asked for, and the next store worker builds it. Asked for
        while one runs, it follows that one: the points written during a build stay outside
        its index (an ingest's end must find them indexed)."""
        self._wanted.add(name)
        if name not in self._builds:
            self._update_meta(name, index_wanted=True)

    def _note_writes(self, name: str, ids: Sequence[str]) -> None:
        """Under the index lock, after a write: its ids noted for a build in progress; past
        `index_after_points` counted writes, the engine's own count decides on a build."""
        build = self._builds.get(name)
        if build is not None:
            build.written.update(_point_id(i) for i in ids)
        counted = self._unindexed.get(name)
        if counted is None:  # the first write since this process opened the collection
            counted = self._outside_index(name)
        else:
            counted += len(ids)  # points written again count twice: the engine corrects it
        due = counted >= self._index_after_points and build is None
        if due and name not in self._wanted and not self._bulk_loading(name):
            counted = self._outside_index(name)
            if counted >= self._index_after_points:
                log.info("%s: %d points outside its index, building it", name, counted)
                self._want(name)
        self._unindexed[name] = counted

    def _bulk_loading(self, name: str) -> bool:
        meta = self._meta(name)
        return meta.get("bulk", False) and not meta["indexed"]

    def _outside_index(self, name: str) -> int:
        with self._errors():
            return unindexed(self._shard(name).info())

    def _maintain(self, poll_s: float) -> None:
        """The maintenance thread: starts the builds asked for, swaps in the finished ones,
        closes replaced shards. A failure is logged and the collection keeps its live shard."""
        while not self._stopping.wait(poll_s):
            with self._index_lock:  # a write or a call may change them meanwhile
                names = [*self._wanted, *self._builds]
            for name in names:
                try:
                    self._advance(name)
                except Exception:
                    log.exception("index build of %s abandoned; the collection is unchanged", name)
                    with self._index_lock:
                        self._abandon_build(name)
            self._flush_due()
            self._close_retired()

    def _advance(self, name: str) -> None:
        build = self._builds.get(name)
        if build is None:
            with self._index_lock:
                if name in self._wanted and name not in self._builds:
                    self._wanted.discard(name)
                    if self._exists(name):
                        self._start_build(name)
            return
        code = build.process.poll()
        if code is None:
            return
        if code != 0:
            with self._index_lock:
                self._abandon_build(name)
                self._failed[name] = f"building the index of {name!r} failed (exit code {code})"
            log.error("%s", self._failed[name])
            return
        self._finish_build(name, build)

    def _start_build(self, name: str) -> None:
        """Under the index lock: the live shard flushed and copied, the child started on the
        copy. Nothing outside the index (and the graph built once): nothing to do."""
        meta, live = self._meta(name), self._shard(name)
        if meta["indexed"] and unindexed(live.info()) == 0:
            self._update_meta(name, index_wanted=False)
            return
        with self._errors():
            live.flush()
        folder = new_shard_folder(self._folder(name))
        layout = self._layout(name)
        argv = builder_argv(folder, meta["dim"], HNSW_M, layout["quantization"], layout["on_disk"])
        try:
            copy_shard(self._live_path(name), folder)
            self._builds[name] = Build(folder, subprocess.Popen(argv))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a copy cut short (the disk full)
            raise
        log.info("building the index of %s in process %d", name, self._builds[name].process.pid)

    def _finish_build(self, name: str, build: Build) -> None:
        """The points written during the build caught up beside the writes (a round at a
        time), the last ones under the index lock, then the swap."""
        built = edge.EdgeShard.load(str(build.folder))
        try:
            live, caught = self._shard(name), 0
            for _ in range(CATCH_UP_ROUNDS):
                with self._index_lock:
                    if len(build.written) <= CATCH_UP_CHUNK:
                        break
                    ids, build.written = build.written, set()
                caught += catch_up(live, built, ids)
            with self._index_lock:
                if self._builds.get(name) is not build:  # abandoned meanwhile (deleted)
                    built.close()
                    return
                caught += self._swap_in(name, build, live, built)
        except BaseException:
            built.close()
            raise
        log.info("%s: index built and swapped in (%d points written during the build "
                 "caught up)", name, caught)  # fmt: skip

    def _swap_in(self, name: str, build: Build, live: edge.EdgeShard, built: edge.EdgeShard) -> int:
        """Under the index lock: the last points caught up (returns how many), then meta.json
        names the built folder (one rename: the switch), then the shard object replaced. The
        old one stays open `RETIRE_S` for a search caught on it."""
        caught = catch_up(live, built, build.written)
        copy_missing_indexes(live, built)
        built.flush()
        outside, old = unindexed(built.info()), self._live_path(name)
        again = name in self._wanted  # asked for during this build: the next one follows
        self._update_meta(name, shard=build.folder.name, indexed=True, index_wanted=again)
        # From the switch on, nothing that can fail: the build's folder is the live one now.
        with self._shards_lock:
            self._shards[name] = built
        del self._builds[name]
        self._unindexed[name] = outside
        self._retired.append((time.monotonic() + RETIRE_S, live, old))
        return caught

    def _abandon_build(self, name: str) -> None:
        """Under the index lock: the child stopped, its copy removed; the live shard stays."""
        build = self._builds.get(name)
        if build is None:
            return
        if build.process.poll() is None:
            build.process.kill()
            build.process.wait()
        shutil.rmtree(build.folder, ignore_errors=True)
        del self._builds[name]  # last: gone from here means gone from the disk

    def _close_retired(self, everything: bool = False) -> None:
        now = time.monotonic()
        with self._index_lock:
            due = [r for r in self._retired if everything or r[0] <= now]
            self._retired = [r for r in self._retired if r not in due]
        for _, shard, folder in due:
            shard.close()
            shutil.rmtree(folder, ignore_errors=True)
        if due:
            _return_freed_memory()

    def _tidy_builds(self) -> list[str]:
        """At open: what crashed builds left removed; the collections whose build was asked
        for and not swapped in (to build again)."""
        wanted = []
        for name in self.collections():
            meta = self._meta(name)
            remove_leftovers(self._folder(name), meta.get("shard", LIVE_SHARD))
            if meta.get("index_wanted"):
                wanted.append(name)
        return wanted

    # --- helpers --------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._reads_lock:
            self._reads += 1
            self._no_reads.clear()
        try:
            yield
        finally:
            with self._reads_lock:
                self._reads -= 1
                if not self._reads:
                    self._no_reads.set()

    def _folder(self, name: str) -> Path:
        _check_name(name)
        return self.root / "collections" / name

    def _exists(self, name: str) -> bool:
        return (self._folder(name) / "meta.json").is_file()

    def _resolve(self, name: str) -> str:
        """The collection behind `name` (itself, or the one its alias points at)."""
        if self._exists(name):
            return name
        target = self.aliases().get(name)
        if target is None or not self._exists(target):
            raise StoreError(f"collection {name!r} does not exist")
        return target

    def _layout(self, name: str) -> dict:
        """How the collection was made (one made before layouts were recorded: float32)."""
        made = self._meta(self._resolve(name))["metadata"].get("layout", {})
        return {"quantization": "none", "on_disk": False} | made

    def _params(self, name: str, hnsw_ef: int | None = None) -> edge.SearchParams:
        return search_params(self._layout(name)["quantization"], hnsw_ef)

    def _meta(self, name: str) -> dict:
        return json.loads((self._folder(name) / "meta.json").read_text())

    def _update_meta(self, name: str, **changes: Any) -> None:
        with self._index_lock:  # read and replaced in one step: a swap's switch never undone
            _write_json(self._folder(name) / "meta.json", self._meta(name) | changes)

    def _live_path(self, name: str) -> Path:
        """The live shard's folder, named in meta.json (a build's swap renames it)."""
        return self._folder(name) / self._meta(name).get("shard", LIVE_SHARD)

    def _shard(self, name: str) -> edge.EdgeShard:
        name = self._resolve(name)
        shard = self._shards.get(name)
        if shard is None:
            with self._shards_lock, self._errors():
                shard = self._shards.get(name)  # opened by another thread meanwhile?
                if shard is None:
                    shard = self._shards[name] = edge.EdgeShard.load(str(self._live_path(name)))
        return shard

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Edge raises plain exceptions: a locked shard or the disk is worth retrying, the
        rest (a wrong id, a wrong dimension) is the request's fault."""
        where = self.description
        try:
            yield
        except MedindexError:
            raise
        except OSError as exc:
            raise StoreError(f"{where} cannot use its files: {first_line(exc)}", True) from exc
        except Exception as exc:
            text = first_line(exc)
            if "WouldBlock" in text:
                raise StoreError(
                    f"{where}: a collection's shard is held by another process "
                    "(its index being built?)",
                    True,
                ) from exc
            if "No space" in text or "Service runtime error" in text:
                raise StoreError(f"{where} cannot use its files: {text}", True) from exc
            raise StoreError(f"Qdrant Edge ({where}) refused the request: {text}") from exc


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise StoreError(
            f"collection name {name!r}: letters, digits, '_', '.' and '-' only (up to 255), "
            "not starting with '.' or '-'"
        )


def _field_index(field: str, kind: str) -> edge.UpdateOperation:
    """A payload index, its type named as in the spec ("keyword": PayloadSchemaType.Keyword)."""
    schema_type = getattr(edge.PayloadSchemaType, kind.capitalize())
    return edge.UpdateOperation.create_field_index(field, schema_type)


def _query(request: SearchRequest, params: edge.SearchParams | None) -> edge.QueryRequest:
    return edge.QueryRequest(
        params=params,
        limit=request.limit,
        query=edge.Query.Nearest(request.vector),
        filter=edge_filter(parse_filter(request.filter)),
        score_threshold=request.score_threshold,
        with_payload=edge_payload_selector(parse_payload_selector(request.with_payload)),
        with_vector=request.with_vectors,
    )


def recommend_vector(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Qdrant's default `average_vector` strategy: mean(pos) + (mean(pos) - mean(neg))."""
    mean = positives.mean(axis=0)
    return mean + (mean - negatives.mean(axis=0)) if len(negatives) else mean


def refuse_local_mode(root: Path) -> None:
    """A folder written by qdrant-client's local mode (the embedded engine before Edge) is
    never misread as an empty store."""
    if (root / "meta.json").is_file() or (root / "collection").is_dir():
        raise StoreError(
            f"{root} holds a store made by the old embedded engine (qdrant-client local mode), "
            f"which medindex no longer reads: move it aside (mv {root} {root}.old) and rebuild "
            "each collection from its source with `medindex reindex`"
        )
