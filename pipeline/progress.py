"""Job state in Redis: what each ingest holds, what is indexed, what failed and why.

Rows embedded and indexed are bits of a bitmap per job (bit n: row n), so a redelivered job
counts once and a job's bookkeeping takes a bit per row (125 KB a million rows), whatever the
dataset's size; failures, rarer, are a hash of their reasons.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import NEVER_DECODE
from redis.retry import Retry

from pipeline.errors import MedindexError, first_line, mask_url

PREFIX = "medindex:job:"
JOB_INDEX = "medindex:jobs"
WRITE_LOG = "medindex:writes"  # recent Qdrant writes: collection, points, seconds
WRITE_LOG_LENGTH = 10_000
AUDIT_KIND = "audit"  # an audit job's meta "kind" (an ingest's has none)
# A restarted Redis (AOF reload, failover) is ridden out, not reported: about 30 s of retries.
RECONNECT_RETRIES = 20
RECONNECT_BACKOFF = {"cap": 2.0, "base": 0.1}


# A row's failure is recorded only where the row is not indexed, in one step: checked and set
# apart, a write finishing in between (another process) could leave a row indexed and failed.
# Either way the row is no longer one `retry` sent again that is still out.
# KEYS: indexed bitmap, failed hash, parked list, retrying set. ARGV: a batch to park (or ""),
# then row, failure.
_FAIL_UNLESS_INDEXED = """
if ARGV[1] ~= "" then redis.call("RPUSH", KEYS[3], ARGV[1]) end
for i = 2, #ARGV, 2 do
  if redis.call("GETBIT", KEYS[1], ARGV[i]) == 0 then
    redis.call("HSET", KEYS[2], ARGV[i], ARGV[i + 1])
  end
  redis.call("SREM", KEYS[4], ARGV[i])
end
"""


class BrokerError(MedindexError):
    """Redis cannot be reached; the message is meant for the user."""

    transient = True  # an outage, not the caller's mistake


@dataclass(frozen=True)
class Progress:
    job_id: str
    total: int
    embedded: int  # vectors made, maybe still buffered before their write
    indexed: int  # written to the store
    failed: int
    created_at: float
    meta: dict
    cancelled: bool = False
    resent: int = 0  # rows sent again after the job stalled (see producers.ingest.wait)
    retrying: int = 0  # failed rows `retry` sent again, not yet indexed or failed again

    @property
    def done(self) -> int:
        return self.indexed + self.failed

    @property
    def finished(self) -> bool:
        """Every row indexed or failed; or cancelled, with no row `retry` sent still out (the
        rows the cancel skipped stay pending)."""
        return self.done >= self.total or (self.cancelled and not self.retrying)

    @property
    def state(self) -> str:
        """running, cancelled, done; "failed" when it ended without one image indexed."""
        if self.done >= self.total:
            return "failed" if self.failed and not self.indexed else "done"
        return "cancelled" if self.cancelled else "running"

    @property
    def is_audit(self) -> bool:
        return self.meta.get("kind") == AUDIT_KIND

    @property
    def resumed_by(self) -> str:
        """The command that resumes the job: an audit's, or an ingest's (given its dataset)."""
        if self.is_audit:
            incremental = " --incremental" if self.meta.get("incremental") else ""
            collection = self.meta.get("collection")
            return f"medindex audit --collection {collection} --job-id {self.job_id}{incremental}"
        return f"medindex ingest --job-id {self.job_id}"

    def rate(self, now: float | None = None) -> float:
        """Images per second since the job was created."""
        elapsed = (now or time.time()) - self.created_at
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate and not self.finished else None


def connect_redis(url: str) -> redis.Redis:
    """A client that retries through Redis restarts, once Redis was seen up: a Redis that is
    not there at all is the user's to fix, and said at once."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, retry=Retry(NoBackoff(), 0)).ping()
    except redis.RedisError as exc:
        raise BrokerError(f"cannot reach Redis at {mask_url(url)}: {first_line(exc)}") from exc
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=3,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(**RECONNECT_BACKOFF), RECONNECT_RETRIES),
    )


class JobTracker:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._fail_unless_indexed = client.register_script(_FAIL_UNLESS_INDEXED)

    def create(self, job_id: str, total: int, meta: dict[str, Any]) -> None:
        """A new job, none of its rows sent yet (`fed` 0: its producer sends them)."""
        now = time.time()
        record = {"total": total, "created_at": now, "meta": json.dumps(meta), "fed": 0}
        pipe = self.redis.pipeline()
        pipe.hset(PREFIX + job_id, mapping=record)
        pipe.zadd(JOB_INDEX, {job_id: now})
        pipe.execute()

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(PREFIX + job_id))

    def record_resent(self, job_id: str, rows: int) -> None:
        self.redis.hincrby(PREFIX + job_id, "resent", rows)

    def resume(self, job_id: str) -> None:
        """None of its rows needs letting through a cancel any more. A cancelled job (its
        queued shards were skipped) and one enqueued whole by an older producer are fed again
        from their first row; a running one from where its feeding stopped (a message lost
        before it is sent again by the stall re-send)."""
        record = self.redis.hmget(PREFIX + job_id, "cancelled", "fed")
        pipe = self.redis.pipeline()
        pipe.hdel(PREFIX + job_id, "cancelled")
        pipe.delete(f"{PREFIX}{job_id}:retrying")
        if record[0] is not None or record[1] is None:
            pipe.hset(PREFIX + job_id, "fed", 0)
        pipe.execute()

    def fed(self, job_id: str) -> int | None:
        """The first row not yet sent by the job's feeding (None: a job enqueued whole)."""
        fed = self.redis.hget(PREFIX + job_id, "fed")
        return None if fed is None else int(fed)

    def set_fed(self, job_id: str, row: int) -> None:
        self.redis.hset(PREFIX + job_id, "fed", row)

    def pending_shards(self, job_id: str, shards: list[list[int]]) -> list[list[int]]:
        """The shards holding a row neither indexed nor failed."""
        pipe = self.redis.pipeline()
        for rows in shards:
            _get_bits(pipe, f"{PREFIX}{job_id}:indexed", rows)
            pipe.hmget(f"{PREFIX}{job_id}:failed", rows)
        answers = pipe.execute()
        pairs = zip(answers[0::2], answers[1::2], strict=True)
        return [
            rows
            for rows, (indexed, failed) in zip(shards, pairs, strict=True)
            if any(not i and f is None for i, f in zip(indexed, failed, strict=True))
        ]

    def cancel(self, job_id: str) -> None:
        """Shards still queued are skipped by the embed workers; written points stay."""
        if not self.exists(job_id):
            raise MedindexError(f"no job {job_id!r} is known to {self._where()}")
        self.redis.hset(PREFIX + job_id, "cancelled", 1)

    def is_cancelled(self, job_id: str) -> bool:
        return self.redis.hget(PREFIX + job_id, "cancelled") is not None

    def skips(self, job_id: str, rows: list[int]) -> bool:
        """Whether an embed worker skips these rows: their job is cancelled, and they are not
        all rows that `retry` sent again (those go through a cancel; the others stay pending)."""
        if not self.is_cancelled(job_id):
            return False
        return not all(self.redis.smismember(f"{PREFIX}{job_id}:retrying", rows))

    def retrying(self, job_id: str) -> list[int]:
        """Failed rows `retry` sent again that are neither indexed nor failed again yet."""
        return sorted(int(row) for row in self.redis.smembers(f"{PREFIX}{job_id}:retrying"))

    def done_rows(self, job_id: str) -> set[int]:
        """Rows indexed or failed: what a resumed job need not enqueue again."""
        failed = self.redis.hkeys(f"{PREFIX}{job_id}:failed")
        # Read after the failures: a row failed on a retry and indexed since is still done.
        indexed = self.redis.execute_command(
            "GET", f"{PREFIX}{job_id}:indexed", **{NEVER_DECODE: []}
        )
        bits = np.unpackbits(np.frombuffer(indexed or b"", dtype=np.uint8))
        return {int(row) for row in np.flatnonzero(bits)} | {int(row) for row in failed}

    def recent_jobs(self, limit: int = 10) -> list[str]:
        """Newest first."""
        return list(self.redis.zrevrange(JOB_INDEX, 0, limit - 1))

    def mark_embedded(self, job_id: str, rows: list[int]) -> None:
        if rows:
            _set_bits(self.redis, f"{PREFIX}{job_id}:embedded", rows)

    def mark_indexed(self, job_id: str, rows: list[int]) -> None:
        if not rows:
            return
        pipe = self.redis.pipeline()
        _set_bits(pipe, f"{PREFIX}{job_id}:indexed", rows)
        # A row that failed before and was indexed on a retry is no longer a failure.
        pipe.hdel(f"{PREFIX}{job_id}:failed", *rows)
        pipe.srem(f"{PREFIX}{job_id}:retrying", *rows)
        pipe.execute()

    def mark_failed(self, job_id: str, failures: list[dict]) -> None:
        """Each failure: {"row", "key", "reason"}. A row already indexed (by an earlier
        delivery of the same job) stays indexed, so it never counts twice."""
        if failures:
            self._record_failures(job_id, failures, parked="")

    def start_delivery(self, job_id: str, first_row: int) -> int:
        """Count one delivery of a job's shard; returns how many are counted, this one too."""
        return int(self.redis.hincrby(f"{PREFIX}{job_id}:deliveries", str(first_row), 1))

    def end_delivery(self, job_id: str, first_row: int) -> None:
        """The shard's delivery ended in the task (done or failed), not with its worker."""
        self.redis.hdel(f"{PREFIX}{job_id}:deliveries", str(first_row))

    def fail_rows(self, job_id: str, rows: list[int], reason: str) -> None:
        """A whole job that could not be embedded: each of its rows failed with the reason."""
        self.mark_failed(job_id, [{"row": row, "key": None, "reason": reason} for row in rows])

    def _record_failures(self, job_id: str, failures: list[dict], parked: str) -> None:
        parts = ("indexed", "failed", "parked", "retrying")
        keys = [f"{PREFIX}{job_id}:{part}" for part in parts]
        pairs = [value for f in failures for value in (f["row"], json.dumps(f))]
        self._fail_unless_indexed(keys=keys, args=[parked, *pairs])

    def progress(self, job_id: str) -> Progress:
        pipe = self.redis.pipeline()
        pipe.hgetall(PREFIX + job_id)
        pipe.bitcount(f"{PREFIX}{job_id}:embedded")
        pipe.bitcount(f"{PREFIX}{job_id}:indexed")
        pipe.hlen(f"{PREFIX}{job_id}:failed")
        pipe.scard(f"{PREFIX}{job_id}:retrying")
        record, embedded, indexed, failed, retrying = pipe.execute()
        if not record:
            raise MedindexError(f"no job {job_id!r} is known to {self._where()}")
        return Progress(
            job_id=job_id,
            total=int(record["total"]),
            embedded=int(embedded),
            indexed=int(indexed),
            failed=int(failed),
            created_at=float(record["created_at"]),
            meta=json.loads(record["meta"]),
            cancelled="cancelled" in record,
            resent=int(record.get("resent", 0)),
            retrying=int(retrying),
        )

    def park(self, job_id: str, batch_json: str, failures: list[dict]) -> None:
        """Points the store did not take within the retry budget: kept whole in Redis, their
        images shown as failed with the reason, until `medindex retry` sends them again."""
        self._record_failures(job_id, failures, parked=batch_json)  # together, or neither

    def parked(self, job_id: str) -> list[str]:
        return list(self.redis.lrange(f"{PREFIX}{job_id}:parked", 0, -1))

    def unpark(self, job_id: str, count: int) -> None:
        """Drop the first `count` parked batches, once they were sent again."""
        self.redis.ltrim(f"{PREFIX}{job_id}:parked", count, -1)

    def forget_failures(self, job_id: str) -> None:
        """Every failed row pending again, to be sent again by whoever feeds the job (a
        resumed audit); unlike `clear_failures`, a cancel still stops them."""
        self.redis.delete(f"{PREFIX}{job_id}:failed")

    def clear_failures(self, job_id: str, rows: list[int]) -> None:
        """Rows about to be tried again are pending, no longer failed, and let through a
        cancel of their job (`skips`) until they are indexed or failed again."""
        if rows:
            pipe = self.redis.pipeline()
            pipe.hdel(f"{PREFIX}{job_id}:failed", *rows)
            pipe.sadd(f"{PREFIX}{job_id}:retrying", *rows)
            pipe.execute()

    def failure_sample(self, job_id: str, most: int) -> list[dict]:
        """Up to `most` of a job's failures, in no order: enough to name its common reasons
        without reading every failure of a large job."""
        found = self.redis.hscan_iter(f"{PREFIX}{job_id}:failed", count=most)
        return [json.loads(value) for _, value in islice(found, most)]

    def failures(self, job_id: str) -> list[dict]:
        values = self.redis.hvals(f"{PREFIX}{job_id}:failed")
        return sorted((json.loads(v) for v in values), key=lambda f: f["row"])

    def record_write(self, collection: str, points: int, seconds: float) -> None:
        entry = json.dumps({"collection": collection, "points": points, "seconds": seconds})
        pipe = self.redis.pipeline()
        pipe.lpush(WRITE_LOG, entry)
        pipe.ltrim(WRITE_LOG, 0, WRITE_LOG_LENGTH - 1)
        pipe.execute()

    def recent_writes(self, limit: int = WRITE_LOG_LENGTH) -> list[dict]:
        """Newest first."""
        return [json.loads(e) for e in self.redis.lrange(WRITE_LOG, 0, limit - 1)]

    def _where(self) -> str:
        kwargs = self.redis.connection_pool.connection_kwargs
        return f"Redis at {kwargs.get('host')}:{kwargs.get('port')}"


def _set_bits(client: redis.Redis, key: str, rows: list[int]) -> None:
    """Rows' bits set in one command (a pipeline's too)."""
    client.execute_command("BITFIELD", key, *(arg for row in rows for arg in ("SET", "u1", row, 1)))


def _get_bits(client: redis.Redis, key: str, rows: list[int]) -> None:
    """Rows' bits, 0 or 1 each, in order (a pipeline's next answer)."""
    client.execute_command("BITFIELD_RO", key, *(arg for row in rows for arg in ("GET", "u1", row)))
