"""The `edge` backend: Qdrant Edge, the real Qdrant engine in-process (the embedded default).

Edge has shards, not collections: a collection is a folder holding its shard and `meta.json`
(the spec it records, written last, so a half-made collection does not exist); aliases live in
one `aliases.json` replaced by rename, read on every call. One process may open a shard, so
the store worker owns the folder (a lock on it says so) and everyone else calls it through the
broker. Edge has no background optimiser and `optimize()` holds its process (the GIL included)
until done: a collection gets its HNSW index (`start_index`: a reindex's new version after its
bulk load) in a child process that owns the shard until it is ready, so searches and writes of
the other collections never wait behind it. Until then a collection is searched exactly (its
payload indexes narrow a filtered search first). The child: `pipeline.store.edge_build`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
from pipeline.store.errors import StoreError
from pipeline.store.filters import parse_filter, parse_payload_selector
from pipeline.store.points import check_finite, neighbours, range_end, to_hit
from pipeline.store.spec import added_indexes, check_same_vectors, payload_indexes, schema_update
from pipeline.store.types import Hit, NeighbourRequest, RecommendRequest, SearchRequest

log = logging.getLogger(__name__)

GROUP_READS = 5  # the server's bound: reads to find groups, and again to fill them
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


class EdgeStore(Store):
    def __init__(self, root: Path, quantization: str = "none", on_disk: bool = False) -> None:
        """`quantization` and `on_disk`: the layout of the collections it creates (recorded
        in each one's metadata under `layout`; a collection keeps its own)."""
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
        self._builds: dict[str, subprocess.Popen] = {}

    # --- management -----------------------------------------------------------------------

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
            meta = {"dim": spec["dim"], "distance": "Cosine", "indexed": False}  # no HNSW yet
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

    def start_index(self, name: str, m: int = HNSW_M) -> None:
        name = self._resolve(name)
        if self._meta(name)["indexed"] or name in self._builds:
            return
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()  # the builder owns it until it is ready
        shard_path, dim = self._folder(name) / "shard", self._meta(name)["dim"]
        layout = self._layout(name)
        argv = builder_argv(shard_path, dim, m, layout["quantization"], layout["on_disk"])
        self._builds[name] = subprocess.Popen(argv)
        log.info("building the index of %s in process %d", name, self._builds[name].pid)

    def index_ready(self, name: str) -> bool:
        name = self._resolve(name)
        build = self._builds.get(name)
        if build is None:  # none running here (this process restarted): start it again
            if self._meta(name)["indexed"]:
                return True
            self.start_index(name)
            return False
        code = build.poll()
        if code is None:
            return False
        del self._builds[name]
        if code != 0:
            raise StoreError(f"building the index of {name!r} failed (exit code {code})")
        self._update_meta(name, indexed=True)
        return True

    def set_metadata(self, name: str, metadata: dict) -> None:
        name = self._resolve(name)
        self._update_meta(name, metadata=self._meta(name)["metadata"] | metadata)

    def delete_collection(self, name: str) -> None:
        if not self._exists(name):
            raise StoreError(f"collection {name!r} does not exist")
        self._refuse_while_building(name)
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

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        check_finite(vectors)
        shard = self._shard(name)
        with self._errors():
            points = [
                edge.Point(_point_id(i), v, p)
                for i, v, p in zip(ids, vectors.tolist(), payloads, strict=True)
            ]
            shard.update(edge.UpdateOperation.upsert_points(points))
            # Acknowledged means on disk: Edge's WAL holds the points once `update` returns
            # (a killed process loses nothing); the flush also survives a power cut.
            shard.flush()

    # --- reads ----------------------------------------------------------------------------

    def collections(self) -> list[str]:
        folders = (self.root / "collections").iterdir()
        return sorted(f.name for f in folders if (f / "meta.json").is_file())

    def aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def collection_info(self, name: str) -> dict:
        meta = self._meta(self._resolve(name))
        with self._errors():
            info = self._shard(name).info()
        return {
            "name": name,
            "dim": meta["dim"],
            "distance": meta["distance"],
            "points": info.points_count,
            "metadata": meta["metadata"],
            # The indexes the engine holds (PayloadSchemaType.Keyword -> "keyword").
            "payload_indexes": {
                field: str(index.data_type).rpartition(".")[2].lower()
                for field, index in info.payload_schema.items()
            },
        }

    def metadata(self, name: str) -> dict:
        return self._meta(self._resolve(name))["metadata"]

    def search(self, name: str, request: SearchRequest) -> list[Hit]:
        query = _query(request, self._params(name))
        shard = self._shard(name)
        with self._errors():
            return [to_hit(p) for p in shard.query(query)]

    def search_batch(self, name: str, requests: list[SearchRequest]) -> list[list[Hit]]:
        params = self._params(name)
        queries = [_query(r, params) for r in requests]
        shard = self._shard(name)
        with self._errors():
            results = shard.query_batch(edge.QueryBatchRequest(queries))
        return [[to_hit(p) for p in points] for points in results]

    def neighbours(self, name: str, requests: list[NeighbourRequest]) -> list[list[Hit]]:
        return neighbours(self, name, requests)

    def groups(
        self, name: str, request: SearchRequest, group_by: str, group_size: int = 1
    ) -> list[dict]:
        """Edge's binding has no query_groups: the server's own algorithm over plain queries.
        Each read takes the next `limit * group_size` hits outside the full groups (and the
        hits already read); `GROUP_READS` reads look for groups, as many again fill the best
        ones. Bounded like the server's, whatever the collection's size: with fewer values
        than `limit`, a read or two, and the groups found."""
        shard, params = self._shard(name), self._params(name)
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

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        shard = self._shard(name)
        with self._errors():
            points = shard.retrieve([_point_id(i) for i in ids], True, with_vectors)
        return [to_hit(p) for p in points]

    def count(self, name: str, filter: dict | None = None) -> int:
        request = edge.CountRequest(exact=True, filter=edge_filter(parse_filter(filter)))
        shard = self._shard(name)
        with self._errors():
            return shard.count(request)

    def facet(
        self, name: str, key: str, filter: dict | None = None, limit: int = 10_000
    ) -> list[dict]:
        request = edge.FacetRequest(key, limit, True, edge_filter(parse_filter(filter)))
        shard = self._shard(name)
        with self._errors():
            hits = shard.facet(request).hits
        ordered = sorted(hits, key=lambda hit: (-hit.count, str(hit.value)))
        return [{"value": hit.value, "count": hit.count} for hit in ordered]

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
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._lock.close()

    # --- helpers --------------------------------------------------------------------------

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

    def _params(self, name: str) -> edge.SearchParams | None:
        return search_params(self._layout(name)["quantization"])

    def _meta(self, name: str) -> dict:
        return json.loads((self._folder(name) / "meta.json").read_text())

    def _update_meta(self, name: str, **changes: Any) -> None:
        _write_json(self._folder(name) / "meta.json", self._meta(name) | changes)

    def _refuse_while_building(self, name: str) -> None:
        """The builder owns the shard until its index is ready: opening it here would take the
        write-ahead log from under the build (which then fails) and write beside it. Worth
        retrying: the writer's backoff waits for the build."""
        if name in self._builds and self._builds[name].poll() is None:
            raise StoreError(f"collection {name!r} is being indexed", transient=True)

    def _shard(self, name: str) -> edge.EdgeShard:
        name = self._resolve(name)
        shard = self._shards.get(name)
        if shard is None:
            self._refuse_while_building(name)
            with self._errors():
                shard = self._shards[name] = edge.EdgeShard.load(str(self._folder(name) / "shard"))
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
