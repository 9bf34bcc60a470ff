"""The message contract on a bare Redis: what a job's messages carry, and how a producer sees
whether any of them is still out (queued, or delivered and not yet acknowledged)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from pipeline.celery_app import create_app
from pipeline.messages import (
    AUDIT_TASK,
    EMBED_QUEUE,
    EMBED_TASK,
    UPSERT_QUEUE,
    UPSERT_TASK,
    Senders,
    jobs_in_flight,
    messages_in_flight,
    messages_out,
)
from pipeline.schemas import EmbedJob, PointBatch, SourceRef
from pipeline.settings import Settings


@pytest.fixture()
def senders(bare_redis: str) -> Senders:
    return Senders(create_app(Settings(redis_url=bare_redis)))


def embed_job(job_id: str) -> EmbedJob:
    source = SourceRef(dataset=str(Path("/data/skin")))
    return EmbedJob(job_id=job_id, collection="c", source=source, model="m", rows=[0, 1])


def points(job_id: str) -> PointBatch:
    return PointBatch(job_id=job_id, collection="c", ids=[], rows=[], payloads=[], vectors=b"",
                      dim=0)  # fmt: skip


def test_a_queued_or_unacknowledged_message_keeps_its_job_in_flight(
    senders: Senders, bare_redis: str
) -> None:
    redis = senders.app.connection_for_write().default_channel.client
    assert jobs_in_flight(redis) == set() and messages_out(redis) == 0
    senders.send_embed_job(embed_job("a"))
    senders.send_points(points("b"))
    senders.send_map_request("c", None)  # a map request belongs to no job
    assert jobs_in_flight(redis) == {"a", "b"}
    assert messages_out(redis) == 3  # what the producer's backpressure counts, every job's
    with Connection(bare_redis) as broker:
        delivered = broker.SimpleQueue(EMBED_QUEUE, no_ack=False, accept=["msgpack"]).get(timeout=5)
        assert redis.llen(EMBED_QUEUE) == 1  # the map request; job a's message is delivered
        assert jobs_in_flight(redis) == {"a", "b"}  # delivered, not acknowledged: still out
        assert messages_out(redis) == 3
        delivered.ack()
        assert jobs_in_flight(redis) == {"b"} and messages_out(redis) == 2
        broker.SimpleQueue(UPSERT_QUEUE, no_ack=False, accept=["msgpack"]).get(timeout=5).ack()
    assert jobs_in_flight(redis) == set() and messages_out(redis) == 1  # the map request


def test_a_jobs_messages_are_counted_by_task(senders: Senders) -> None:
    """What the backpressure tests bound: a job's messages of one task (the bodies are
    protocol 1's, so the task is told by a header of ours)."""
    redis = senders.app.connection_for_write().default_channel.client
    senders.send_embed_job(embed_job("a"))
    senders.send_embed_job(embed_job("a"))
    senders.send_points(points("a"))
    senders.send_audit_shard("audit-1", {}, 0, [0, 1], ["x", "y"])
    assert messages_in_flight(redis, EMBED_TASK) == {"a": 2}
    assert messages_in_flight(redis, UPSERT_TASK) == {"a": 1}
    assert messages_in_flight(redis, AUDIT_TASK) == {"audit-1": 1}
    assert messages_in_flight(redis) == {"a": 3, "audit-1": 1}
