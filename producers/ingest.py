"""Shard a dataset into jobs of `job_size` row references, enqueue them, follow progress."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from redis import Redis, RedisError

from pipeline import fingerprint
from pipeline.celery_app import senders
from pipeline.errors import MedindexError
from pipeline.messages import EMBED_QUEUE, jobs_in_flight, messages_out
from pipeline.model_info import default_pooling, describe
from pipeline.progress import JobTracker, Progress, connect_redis
from pipeline.schemas import EmbedJob, PointBatch, ReadOptions, SourceRef
from pipeline.settings import Settings
from pipeline.sources import (
    Source,
    SourceError,
    detect_format,
    resolve,
    source_class,
    versioned,
)
from pipeline.store import Admin, StoreError, open_store
from producers.schema import SchemaError, collection_schema
from producers.spec import SourceSpec

log = logging.getLogger(__name__)

LOCK = "medindex:reindex-lock:"  # an alias -> held by a reindex of it, or an ingest into it


@dataclass(frozen=True)
class IngestRequest:
    spec: SourceSpec  # what to read, how, and with which model (default: the settings')
    collection: str
    job_id: str | None = None
    resume: bool = False  # continue the newest unfinished job of this dataset and collection
    # A collection recording no schema yet starts from this one's (a reindex: the serving
    # version's label field and index types carry over to the new version).
    schema_from: str | None = None


def shards(rows: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(rows), size):
        yield list(rows[start : start + size])


def start_ingest(request: IngestRequest, settings: Settings) -> tuple[str, int, int]:
    """Check everything a worker will need, then enqueue.

    Returns (job id, images, shards enqueued now). At most `max_queued_jobs` messages of the
    job are out at once: `wait` sends the next shards as these finish (`feed`). Resuming a job
    (same id, or `resume`) sends only the shards that still hold rows neither indexed nor
    failed; one started over other data or options is refused (`JobChanged`). The
    collection's name lock (`alias_lock`) is held from the collection's update to the first
    shards sent: an ingest waits for a reindex.
    """
    ref = source_ref(request.spec)
    source = source_class(ref.format)(ref)
    if ref.format == "dicom" and ref.options.deidentify:
        check_workers_key(settings)
    store = open_store(settings)
    recorded = _recorded_schema(request, store)
    ref, source = _keyed_as_recorded(request, ref, source, recorded)
    total = len(source)
    if problem := source.keys.describe(source.schema.key_field or "key"):
        log.warning("%s %s: %s", ref.dataset, ref.split, problem)
    if not source.schema.fields:
        log.warning("%s: its points carry no field but `source` (no metadata read: a table of "
                    "the images' findings can be given as --dataset)", ref.dataset)  # fmt: skip
    model = request.spec.model or settings.model
    pooling = request.spec.pooling or default_pooling(model)
    tracker = JobTracker(connect_redis(settings.broker_url))
    if request.job_id and tracker.exists(request.job_id):
        _an_ingest(tracker.progress(request.job_id))  # before the collection is touched
    spec = describe(model, pooling, settings.preprocessing) | {"dataset": ref.dataset}
    name = _lock_name(request.collection, store)
    busy = f"{name!r} is being reindexed (or another ingest into it starts): run this again later"
    with alias_lock(tracker.redis, name, settings.reindex_lock_s, busy):
        store.ensure_collection(request.collection, spec | _schema_spec(request, source, recorded))
        meta = _meta(request, ref, model) | {"pooling": pooling}
        dataset_now = {"rows": total, "fingerprint": source.keys.fingerprint}
        job_id = request.job_id or (_unfinished_job(tracker, meta) if request.resume else None)
        if job_id and tracker.exists(job_id):
            _check_same_job(tracker, job_id, meta, dataset_now)
            tracker.resume(job_id)
        else:
            job_id = job_id or uuid.uuid4().hex[:12]
            tracker.create(job_id, total, meta | dataset_now)
        sent = feed(tracker, job_id, settings)
    return job_id, total, sent


@dataclass(frozen=True)
class Sending:
    """How a job's rows go out: in shards of `size` rows, one message each, sent by `send` (an
    ingest's embed jobs, an audit's neighbour queries)."""

    size: int
    send: Callable[[list[list[int]]], None]


def sending_of(progress: Progress, settings: Settings) -> Sending | None:
    """An ingest's rows go out as embed jobs of its source; an audit's shards carry point ids
    that only its own process holds (`medindex audit --job-id` resumes it): None."""
    if progress.is_audit:
        return None
    job_id, meta = progress.job_id, progress.meta
    return Sending(settings.job_size, lambda todo: _enqueue_shards(job_id, meta, todo))


def feed(
    tracker: JobTracker, job_id: str, settings: Settings, sending: Sending | None = None
) -> int:
    """Send a job's next shards (those holding a pending row) until `max_queued_jobs`
    messages are out (queued, or delivered and not acknowledged, of any job: ingests and
    audits running side by side share the bound); returns how many were sent.

    Redis then holds a bounded number of messages whatever the datasets' sizes. A cancelled
    job, one fed to its end and one enqueued whole (by an older producer) get nothing."""
    fed, progress = tracker.fed(job_id), tracker.progress(job_id)
    sending = sending or sending_of(progress, settings)
    if sending is None or fed is None or fed >= progress.total or progress.cancelled:
        return 0
    room = settings.max_queued_jobs - messages_out(tracker.redis)
    todo: list[list[int]] = []
    while len(todo) < room and fed < progress.total:
        rows = shards(range(fed, progress.total), sending.size)
        candidates = list(islice(rows, room - len(todo)))
        todo += tracker.pending_shards(job_id, candidates)
        fed = candidates[-1][-1] + 1
    sending.send(todo)
    tracker.set_fed(job_id, fed)
    return len(todo)


def index_after_ingest(collection: str, settings: Settings) -> None:
    """An ingest's end: the points it wrote outside the collection's HNSW index are built into
    it in the background (the collection serves meanwhile). Not started (the store worker
    down): said, and left to the next trigger; the points are in either way."""
    try:
        open_store(settings).start_index(collection)
    except StoreError as exc:
        log.warning("%s: its index build was not started (%s); the next ingest starts it",
                    collection, exc)  # fmt: skip


def check_workers_key(settings: Settings) -> None:
    """De-identified DICOM is read with the embed workers' MEDINDEX_DEID_KEY: a worker holding
    none, or another than this producer's (patients hashed apart from the ones already
    indexed), would fail or split every image. Asked of the workers before anything is queued;
    with none answering (started later), nothing can be checked."""
    answers = senders.worker_deid_fingerprints()
    embedders = {w: a for w, a in answers.items() if EMBED_QUEUE in a.get("queues", ())}
    if not embedders:
        log.warning("no embed worker answered: cannot check that they hold this MEDINDEX_DEID_KEY")
        return
    mine = settings.deid_fingerprint()
    others = sorted(w for w, a in embedders.items() if a["fingerprint"] != mine)
    if others:
        keyless = all(embedders[w]["fingerprint"] is None for w in others)
        raise MedindexError(
            f"embed worker {', '.join(others)} holds {'no' if keyless else 'another'} "
            "MEDINDEX_DEID_KEY than this producer: every DICOM image would fail or be hashed "
            "apart; give the workers this key and restart them"
        )


@contextmanager
def alias_lock(redis: Redis, name: str, lifetime: int, busy: str) -> Iterator[None]:
    """The lock of an alias (or of a collection a reindex may adopt): held by a reindex of it
    for its whole run, and by an ingest into it while it starts. Renewed by a thread while
    held; after a kill, it lapses `lifetime` seconds later, so the next holder waits up to that
    long (and says so) before it gives up with `busy`."""
    lock = redis.lock(LOCK + name, timeout=lifetime, thread_local=False)  # renewed elsewhere
    if not lock.acquire(blocking=False):
        wait_s = lifetime + 5
        log.warning("%r is being reindexed or written: waiting up to %ds", name, wait_s)
        if not lock.acquire(blocking=True, blocking_timeout=wait_s):
            raise MedindexError(busy)
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lifetime / 3):
            with suppress(RedisError):  # Redis restarting: the next renewal catches up
                lock.reacquire()

    renewer = threading.Thread(target=renew, name=f"alias-lock-{name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        with suppress(RedisError):  # lapsed meanwhile (Redis lost it): nothing to free
            lock.release()


def _lock_name(collection: str, store: Admin) -> str:
    """Whose lock a write into `collection` takes: the alias serving it, else its own name (an
    alias, or a plain collection that a reindex of that name would adopt)."""
    serving = {target: alias for alias, target in store.aliases().items()}
    return serving.get(collection, collection)


def source_ref(spec: SourceSpec) -> SourceRef:
    """The reference every job of this ingest carries: the format (detected when not given)
    and the read options, fixed once here so that every worker reads alike. (DICOM without a
    de-identification key is refused when the producer opens the source.)"""
    fmt = spec.format or detect_format(spec.dataset)
    reader = source_class(fmt)  # an unknown format is refused here, on one line
    local = Path(spec.dataset).expanduser()
    if local.exists() and not reader.detect(local):
        raise SourceError(f"--format {fmt}: {spec.dataset} is not {fmt} data")
    return resolve(spec.dataset, spec.split, spec.source_name, fmt, spec.options)


def _recorded_schema(request: IngestRequest, store: Admin) -> dict | None:
    """The schema the collection records; for one recording none yet, `schema_from`'s."""
    names = set(store.collections()) | set(store.aliases())
    return next(
        (
            schema
            for name in (request.collection, request.schema_from)
            if name in names and (schema := store.metadata(name).get("schema"))
        ),
        None,
    )


def _keyed_as_recorded(
    request: IngestRequest, ref: SourceRef, source: Source, recorded: dict | None
) -> tuple[SourceRef, Source]:
    """A source holding the collection's recorded key field is keyed by it, whatever its key
    column would be detected as today (other distinct counts): another key gives every image a
    new id, and doubles it. `--key-column` naming another is refused. A source without that
    field is other data, keyed its own way."""
    key = (recorded or {}).get("key_field")
    fields = {field.name for field in source.schema.fields}
    if key is None or source.schema.key_field == key or key not in fields:
        return ref, source
    if asked := request.spec.options.key_column:
        raise SchemaError(
            f"collection {request.collection!r} keys its images by {key!r}: --key-column "
            f"{asked!r} would give each a new id (use --key-column {key}, or another collection)"
        )
    ref = ref.model_copy(update={"options": ref.options.model_copy(update={"key_column": key})})
    return ref, source_class(ref.format)(ref)


def _schema_spec(request: IngestRequest, source: Source, recorded: dict | None) -> dict:
    """The collection's schema and payload indexes: the source's, with the user's overrides,
    merged into what the collection already records."""
    label, indexes = request.spec.label_field, dict(request.spec.indexes)
    schema = collection_schema(source.schema, label, indexes, recorded)
    indexes = schema.indexes() | fingerprint.INDEXES  # what `medindex audit` filters on
    return {"schema": schema.to_dict(), "payload_indexes": indexes}


def retry_failed(job_id: str, settings: Settings) -> tuple[int, int]:
    """Send a job's failed images through again: parked points (the store was down) straight
    to the writer, the other images (unreadable then, perhaps fixed since) through embedding.

    Returns (images embedded again, points written again). An image that still fails is
    recorded again, with its reason. Only failed rows are sent: a cancelled job stays
    cancelled, and the rows its cancel skipped stay pending (`ingest --job-id` resumes them).
    """
    tracker = JobTracker(connect_redis(settings.broker_url))
    meta = _an_ingest(tracker.progress(job_id)).meta
    parked = tracker.parked(job_id)
    batches = [PointBatch.model_validate_json(kept) for kept in parked]
    parked_rows = {row for batch in batches for row in batch.rows}
    failed = [failure["row"] for failure in tracker.failures(job_id)]
    to_embed = [row for row in failed if row not in parked_rows]
    # Pending again from here; should sending fail, `ingest --job-id` finds them unfinished.
    tracker.clear_failures(job_id, failed)
    with senders.connection() as producer:
        for batch in batches:
            senders.send_points(batch, parked=True, producer=producer)
    tracker.unpark(job_id, len(parked))
    _enqueue_shards(job_id, meta, list(shards(to_embed, settings.job_size)))
    return len(to_embed), len(parked_rows)


def resend_pending(
    tracker: JobTracker, job_id: str, settings: Settings, sending: Sending | None = None
) -> int:
    """Enqueue again every row of a stalled job that was sent (`feed`) and is neither indexed
    nor failed (of a cancelled job, only those `retry` sent: the rows the cancel skipped stay
    skipped), when no
    message of the job can still be carrying it (none queued, none delivered and
    unacknowledged: those come back by themselves); returns how many (0: some are still out).

    A message can vanish in ways no acknowledgement scheme covers (a broker killed before its
    append-only file held the write); ids are deterministic, so sending a row twice is safe.
    """
    progress = tracker.progress(job_id)
    sending = sending or sending_of(progress, settings)
    if sending is None or job_id in jobs_in_flight(tracker.redis):
        return 0
    if progress.cancelled:
        pending = tracker.retrying(job_id)
    else:
        done = tracker.done_rows(job_id)
        sent = tracker.fed(job_id)
        sent = progress.total if sent is None else sent
        pending = [row for row in range(sent) if row not in done]
    sending.send(list(shards(pending, sending.size)))
    tracker.record_resent(job_id, len(pending))
    return len(pending)


def _enqueue_shards(job_id: str, meta: dict, todo: list[list[int]]) -> None:
    """Shards of a known job's rows, with the source, model and pooling it was started with."""
    source_name = meta["source_name"] if meta["source_name"] != meta["dataset"] else None
    ref = SourceRef(
        dataset=meta["dataset"],
        split=meta["split"],
        name=source_name,
        format=meta.get("format", "hf"),
        options=ReadOptions(**meta.get("options", {})),
    )
    enqueue(job_id, meta["collection"], ref, meta["model"], meta["pooling"], todo)


def enqueue(
    job_id: str,
    collection: str,
    ref: SourceRef,
    model: str,
    pooling: str,
    shard_rows: list[list[int]],
) -> None:
    # Stamped now, not when the job began: rows sent again after a fix must read the fix.
    ref = versioned(ref)
    with senders.connection() as producer:
        for rows in shard_rows:
            job = EmbedJob(
                job_id=job_id,
                collection=collection,
                source=ref,
                model=model,
                pooling=pooling,
                rows=rows,
            )
            senders.send_embed_job(job, producer)


def wait(
    tracker: JobTracker,
    job_id: str,
    on_progress: Callable[[Progress], None],
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    settings: Settings | None = None,
    sending: Sending | None = None,
) -> Progress:
    """Poll the job's state in Redis until every image is indexed or failed.

    With `settings`, the job's next shards are sent (by `sending`, or as its kind sends them)
    as its messages finish (`feed`), and a job that makes no progress for `resend_quiet_s`
    while no message of it is queued, delivered or buffered has its pending rows sent again
    (`resend_pending`): a lost message costs about that long, not a visibility timeout.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    stall_s = settings.resend_quiet_s if settings else None
    last, last_change = None, time.monotonic()
    while True:
        progress = tracker.progress(job_id)
        on_progress(progress)
        if progress.finished or (deadline is not None and time.monotonic() > deadline):
            return progress
        if settings:
            feed(tracker, job_id, settings, sending)
        if (progress.embedded, progress.done) != last:
            last, last_change = (progress.embedded, progress.done), time.monotonic()
        elif stall_s and time.monotonic() - last_change > stall_s:
            resent = resend_pending(tracker, job_id, settings, sending)
            if resent:
                log.warning("job %s: no progress for %.0fs; sent %d rows again", job_id,
                            stall_s, resent)  # fmt: skip
            last_change = time.monotonic()
        time.sleep(poll_s)


def _meta(request: IngestRequest, ref: SourceRef, model: str) -> dict:
    return {
        "collection": request.collection,
        "dataset": ref.dataset,
        "split": ref.split,
        "source_name": ref.identity,
        "model": model,
        "format": ref.format,
        "options": ref.options.model_dump(exclude_defaults=True),
    }


def _unfinished_job(tracker: JobTracker, meta: dict) -> str | None:
    for job_id in tracker.recent_jobs(limit=100):
        progress = tracker.progress(job_id)
        same = all(progress.meta.get(k) == meta[k] for k in ("dataset", "split", "collection"))
        if same and progress.state not in ("done", "failed"):
            return job_id
    return None


def _an_ingest(progress: Progress) -> Progress:
    """The job, unless it is an audit's (its rows are point ids only its command holds)."""
    if progress.is_audit:
        raise MedindexError(f"job {progress.job_id} is an audit: `{progress.resumed_by}` "
                            "resumes it and asks its failed points again")  # fmt: skip
    return progress


class JobChanged(MedindexError):
    """The job to resume was started over other data or with other options; `reason` says
    which (a reindex abandons its version on it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: start a new job (without --job-id/--resume)")
        self.reason = reason


def _check_same_job(tracker: JobTracker, job_id: str, meta: dict, dataset_now: dict) -> None:
    known = tracker.progress(job_id).meta
    for key in ("dataset", "split", "collection", "model", "source_name", "format", "options"):
        if known.get(key, meta[key]) != meta[key]:
            raise JobChanged(
                f"job {job_id} was started with {key}={known.get(key)!r}, not {meta[key]!r}"
            )
    # Rows are resumed by index: the same index must still name the same image.
    if known.get("fingerprint", dataset_now["fingerprint"]) != dataset_now["fingerprint"]:
        raise JobChanged(
            f"dataset {meta['dataset']} ({meta['split']}) changed since job {job_id} started "
            f"({known['rows']} rows then, {dataset_now['rows']} now, or other keys)"
        )
