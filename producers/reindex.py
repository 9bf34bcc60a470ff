"""Zero-downtime reindexing: a new versioned collection behind an alias, bulk-loaded through
the normal pipeline, verified, measured, and only then switched to, atomically.

Searches go through the alias, so they never see a half-built version. Qdrant's own advice:
a collection per version, HNSW deferred during the bulk load, an alias switch.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from redis import Redis

from pipeline.errors import MedindexError
from pipeline.messages import jobs_in_flight
from pipeline.model_info import default_pooling, describe
from pipeline.progress import JobTracker, Progress, connect_redis
from pipeline.quality import knn_agreement, label_field
from pipeline.schemas import SourceRef
from pipeline.settings import Settings
from pipeline.sources import source_class
from pipeline.store import Admin, SearchRequest, finish_bulk, open_store
from producers.ingest import (
    IngestRequest,
    JobChanged,
    alias_lock,
    source_ref,
    start_ingest,
    wait,
)
from producers.spec import SourceSpec

log = logging.getLogger(__name__)

PENDING = "medindex:reindex:"  # alias -> the version being built and its job, for resuming
ROUND_TRIP_SAMPLE = 16
NO_LABEL_NOTE = (
    "quality not computed: the collection has no label field (give one with --label-field); "
    "--min-quality and --max-quality-drop were not applied"
)


class ReindexRefused(MedindexError):
    """The new version was built but not switched to; the message says why."""


@dataclass(frozen=True)
class ReindexRequest:
    alias: str
    spec: SourceSpec  # what to read, how, and with which model (default: the settings')
    min_quality: float | None = None  # absolute floor for the new version
    max_quality_drop: float | None = None  # how much worse than the serving version it may be
    keep: int = 2  # old versions kept besides the serving one


def version_name(alias: str, number: int) -> str:
    return f"{alias}__v{number}"


def versions(names: list[str], alias: str) -> list[tuple[int, str]]:
    """(number, name) of the alias' versions, oldest first."""
    pattern = re.compile(rf"{re.escape(alias)}__v(\d+)")
    found = [(int(m.group(1)), n) for n in names if (m := pattern.fullmatch(n))]
    return sorted(found)


def reindex(
    request: ReindexRequest, settings: Settings, on_progress: Callable[[Progress], None]
) -> dict:
    """One reindex per alias at a time, and no ingest into it meanwhile: concurrent reindexes
    would share version numbers (and one could prune the other's version while it is built),
    and an ingest would write into the version about to be replaced."""
    redis = connect_redis(settings.broker_url)
    alias = request.alias
    busy = f"another reindex of {alias!r} is running (or an ingest into it); wait for it to end"
    with alias_lock(redis, alias, settings.reindex_lock_s, busy):
        return _reindex(request, settings, redis, on_progress)


def _reindex(
    request: ReindexRequest,
    settings: Settings,
    redis: Redis,
    on_progress: Callable[[Progress], None],
) -> dict:
    store = open_store(settings)
    tracker = JobTracker(redis)
    aliases = store.aliases()
    names = store.collections()
    # A plain collection of that name (made by `medindex ingest`, as the deployments do) is
    # adopted: it serves until the first version is verified, which then takes its name.
    adopted = request.alias if request.alias in names else None
    serving = aliases.get(request.alias) or adopted
    model = request.spec.model or settings.model
    pooling = request.spec.pooling or default_pooling(model)
    ref = source_ref(request.spec)
    fixed = request.spec.model_copy(
        update={"model": model, "pooling": pooling, "format": ref.format}
    )
    ingest = IngestRequest(fixed, collection="", schema_from=serving)  # the version: below
    spec = describe(model, pooling, settings.preprocessing)
    spec |= {"dataset": ref.dataset, "split": ref.split}
    origin = spec | {"source_name": ref.identity}
    if serving and (reason := _dropped_points(store, serving, ref)):
        raise MedindexError(f"{reason}; nothing was built")

    def new_version() -> dict:
        number = max((n for n, _ in versions(names, request.alias)), default=0) + 1
        collection = version_name(request.alias, number)
        store.ensure_collection(collection, spec, bulk=True)
        # Recorded at once: an interruption from here on is resumed, not left as an orphan.
        # The serving version's size then: points it takes later, this version cannot hold.
        points = store.count(serving) if serving else None
        started = {"collection": collection, "serving_points": points}
        _record_pending(redis, request.alias, origin | started)
        return origin | started

    def start(pending: dict) -> tuple[str, int, int]:
        version = {"collection": pending["collection"], "job_id": pending.get("job_id")}
        return start_ingest(replace(ingest, **version), settings)

    pending = _pending(redis, request.alias, origin, names, serving) or new_version()
    abandoned = None
    try:
        job_id, total, _ = start(pending)
    except JobChanged as changed:  # killed, then rerun over changed data: that job is void
        abandoned = _abandon(store, tracker, pending, changed.reason)
        pending = new_version()
        job_id, total, _ = start(pending)
    pending["job_id"] = job_id
    _record_pending(redis, request.alias, pending)
    collection = pending["collection"]
    progress = wait(tracker, job_id, on_progress, settings=settings)
    if progress.cancelled:
        raise MedindexError(f"reindex job {job_id} was cancelled; run the same command to resume")
    _settle(tracker, job_id, settings.resend_quiet_s)
    finish_bulk(store, collection)

    summary = {
        "alias": request.alias,
        "collection": collection,
        "previous": serving,
        "job_id": job_id,
        "images": total,
        "indexed": progress.indexed,
        "failed": progress.failed,
    }
    if abandoned:
        summary["abandoned"] = abandoned
    try:
        _verify(store, collection, progress, ref, settings.max_image_bytes)
        label = label_field(store.metadata(collection))
        summary["label_field"] = label
        summary["quality"], sample = knn_agreement(store, collection, label)
        # The serving version is measured on the same points, where it holds them.
        summary["previous_quality"] = (
            knn_agreement(store, serving, label, ids=sample)[0] if serving else None
        )
        _guard(request, summary["quality"], summary["previous_quality"], label)
        then = pending.get("serving_points")
        if serving and (reason := _dropped_points(store, serving, ref, then)):
            raise ReindexRefused(reason)
        if label is None:
            summary["quality_note"] = NO_LABEL_NOTE
    except ReindexRefused as refused:
        store.set_metadata(collection, {"status": f"refused: {refused}"})
        redis.delete(PENDING + request.alias)
        raise
    store.set_metadata(collection, {"quality": summary["quality"], "status": "verified"})
    if adopted:
        # The name must be free for the alias: searches miss it for this one moment.
        store.delete_collection(adopted)
        summary["deleted_plain_collection"] = adopted
    store.switch_alias(request.alias, collection)
    redis.delete(PENDING + request.alias)
    summary["deleted"] = _prune(store, request.alias, request.keep, spare={collection, serving})
    return summary


def _settle(tracker: JobTracker, job_id: str, timeout_s: float) -> None:
    """Wait (at most `timeout_s`) until no message of the finished job is out: copies of its
    shards (a killed run had queued what the resumed run sent again) are written before the
    index is built, not refused while it is."""
    deadline = time.monotonic() + timeout_s
    while job_id in jobs_in_flight(tracker.redis) and time.monotonic() < deadline:
        time.sleep(0.5)


def rollback(store: Admin, alias: str) -> tuple[str, str]:
    """Point the alias back at the newest version older than the serving one."""
    serving = store.aliases().get(alias)
    if serving is None:
        raise MedindexError(f"no alias {alias!r}")
    numbers = dict((name, n) for n, name in versions(store.collections(), alias))
    older = [
        name
        for name, n in numbers.items()
        if n < numbers.get(serving, 0) and store.metadata(name).get("status") == "verified"
    ]
    if not older:
        raise MedindexError(f"alias {alias!r} serves {serving}: there is no older verified version")
    previous = max(older, key=numbers.__getitem__)
    store.switch_alias(alias, previous)
    return serving, previous


def _pending(
    redis: Redis, alias: str, origin: dict, names: list[str], serving: str | None
) -> dict | None:
    """An interrupted reindex of the same data with the same model, to resume."""
    raw = redis.get(PENDING + alias)
    if not raw:
        return None
    pending = json.loads(raw)
    same = all(pending.get(key) == value for key, value in origin.items())
    building = pending["collection"] in names and pending["collection"] != serving
    return pending if same and building else None


def _record_pending(redis: Redis, alias: str, pending: dict) -> None:
    redis.set(PENDING + alias, json.dumps(pending))


def _abandon(store: Admin, tracker: JobTracker, pending: dict, reason: str) -> str:
    """Drop an interrupted reindex's version that cannot be resumed: its job is cancelled (its
    queued shards are skipped), its collection deleted. Returns what was dropped and why."""
    collection, job_id = pending["collection"], pending["job_id"]
    tracker.cancel(job_id)
    store.delete_collection(collection)
    log.warning("abandoned %s (job %s): %s; building a new version", collection, job_id, reason)
    return f"{collection} (job {job_id}): {reason}"


def _dropped_points(
    store: Admin, serving: str, ref: SourceRef, points_then: int | None = None
) -> str | None:
    """Why switching away from the serving version would drop points: some are not of the
    data this reindex reads, or (given its size when the reindex started) some were written
    since. The new version holds neither; the switch would hide them and `--keep` delete them."""
    this_data = [
        {"key": "source.dataset", "match": {"value": ref.dataset}},
        {"key": "source.split", "match": {"value": ref.split}},
    ]
    if other := store.count(serving, {"must_not": [{"must": this_data}]}):
        return (
            f"the serving version {serving} holds {other} points not from {ref.dataset} "
            f"({ref.split}), which a reindex from it would drop"
        )
    now = store.count(serving)
    if points_then is not None and now > points_then:
        return (
            f"the serving version {serving} took {now - points_then} points since this reindex "
            f"started ({points_then} then, {now} now), which it would drop: run it again"
        )
    return None


def _verify(
    store: Admin, collection: str, progress: Progress, ref: SourceRef, max_image_bytes: int
) -> None:
    count = store.count(collection)
    if count != progress.indexed:
        raise ReindexRefused(
            f"{collection} holds {count} points, the job indexed {progress.indexed}"
        )
    if progress.done != progress.total:
        raise ReindexRefused(
            f"{progress.total - progress.done} images are neither indexed nor failed"
        )
    sample = store.scroll(collection, limit=256)["points"]
    chosen = random.Random(0).sample(sample, min(ROUND_TRIP_SAMPLE, len(sample)))
    rows = {p["payload"]["source"]["row"]: p for p in chosen}
    for record in source_class(ref.format)(ref).read(sorted(rows), max_image_bytes):
        point = rows[record.row]
        if any(point["payload"].get(k) != v for k, v in record.payload.items()):
            raise ReindexRefused(f"point {point['id']} does not carry row {record.row}'s payload")
    vectors = store.retrieve(collection, [p["id"] for p in chosen], with_vectors=True)
    # A few hits, not one: an exact duplicate image may tie with the point itself.
    queries = [SearchRequest(vector=v["vector"], limit=4, with_payload=False) for v in vectors]
    for point, hits in zip(vectors, store.search_batch(collection, queries), strict=True):
        if point["id"] not in {h["id"] for h in hits if h["score"] >= 0.999}:
            raise ReindexRefused(f"point {point['id']} does not find itself first")


def _guard(
    request: ReindexRequest, quality: float | None, previous: float | None, label: str | None
) -> None:
    """Quality guards; without a label field there is no quality to guard (the summary says
    so: `quality_note`)."""
    if label is None:
        return
    if request.min_quality is not None and (quality is None or quality < request.min_quality):
        raise ReindexRefused(f"quality {quality} is below --min-quality {request.min_quality}")
    drop = request.max_quality_drop
    if drop is not None and previous is not None and (quality or 0.0) < previous - drop:
        raise ReindexRefused(
            f"quality {quality} is more than {drop} below the serving version's {previous}"
        )


def _prune(store: Admin, alias: str, keep: int, spare: set[str | None]) -> list[str]:
    """Delete the oldest versions beyond `keep`, never one an alias points to."""
    spare = spare | set(store.aliases().values())
    older = [name for _, name in versions(store.collections(), alias) if name not in spare]
    doomed = older[: max(0, len(older) - keep)]
    for name in doomed:
        store.delete_collection(name)
    return doomed
