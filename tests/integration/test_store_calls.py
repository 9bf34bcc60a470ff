"""Calls to the embedded store across the broker, on the real stack: a message cannot aim the
answer (or its expiry) at Redis keys it does not own, a search process cannot delete or
relabel anything, a refusal keeps its kind (outage or mistake) on the way back, and a search
is answered while a write call holds the store worker."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge
from jobs import locked_store, log, point_message, send_points, wait_for, wait_for_log

from pipeline.celery_app import app
from pipeline.messages import STORE_MANAGE_TASK, STORE_QUERY_LIST, UNACKED
from pipeline.progress import JobTracker
from pipeline.settings import get_settings
from pipeline.store import SearchRequest, StoreError
from pipeline.store.remote import REPLY_PREFIX, RemoteAdmin, RemoteReader
from pipeline.store.server import ServerStore
from producers.harness import RunningStack, run_medindex


@pytest.fixture()
def remote(stack: RunningStack) -> RemoteAdmin:
    return RemoteAdmin(get_settings())


def forge(path: str, method: str, args: list, reply_to: str) -> None:
    call = {"method": method, "args": args, "kwargs": {}, "reply_to": reply_to}
    if path == STORE_QUERY_LIST:
        RemoteReader(get_settings()).redis.rpush(STORE_QUERY_LIST, json.dumps(call))
    else:
        app.send_task(path, kwargs=call)


def test_answers_go_only_to_fresh_reply_keys(remote: RemoteAdmin) -> None:
    """Issue 12, item 11: answering used to push to any key and set a 300 s expiry on it."""
    r = remote.redis
    r.hset(UNACKED, "sentinel-delivery", "kept")
    r.set("medindex:job:j1:indexed", "7")
    taken = REPLY_PREFIX + uuid.uuid4().hex
    r.rpush(taken, "someone else's")
    try:
        for key in (UNACKED, "medindex:job:j1:indexed", taken, REPLY_PREFIX + "not-hex"):
            forge(STORE_QUERY_LIST, "collections", [], key)
            forge(STORE_MANAGE_TASK, "collections", [], key)
        remote.redis.rpush(STORE_QUERY_LIST, "not json")  # refused alone, queries go on
        # Answered after the forged calls: each path is served in order.
        remote.collections()
        remote.ensure_collection("answered", {"dim": 4})
        assert r.ttl(UNACKED) == -1 and r.hget(UNACKED, "sentinel-delivery") == "kept"
    finally:
        r.hdel(UNACKED, "sentinel-delivery")
    assert r.ttl("medindex:job:j1:indexed") == -1 and r.get("medindex:job:j1:indexed") == "7"
    assert r.ttl(taken) == -1 and r.lrange(taken, 0, -1) == ["someone else's"]
    assert not r.exists(REPLY_PREFIX + "not-hex")


def test_the_query_path_refuses_management_calls(remote: RemoteAdmin) -> None:
    remote.ensure_collection("kept", {"dim": 4})
    reader = RemoteReader(get_settings())
    assert not hasattr(reader, "delete_collection")  # a search process has no such method
    for method, args in (
        ("delete_collection", ["kept"]),
        ("switch_alias", ["kept_alias", "kept"]),
        ("set_metadata", ["kept", {"model": "forged"}]),
    ):
        with pytest.raises(StoreError, match="not allowed on this path"):
            reader._call(STORE_QUERY_LIST, method, *args)
    assert "kept" in remote.collections() and "kept_alias" not in remote.aliases()
    assert "model" not in remote.metadata("kept")
    with pytest.raises(StoreError, match="not allowed on this path"):
        remote._call(STORE_MANAGE_TASK, "search", "kept", [0.0] * 4)


def test_the_store_worker_checks_arguments_against_the_protocol(remote: RemoteAdmin) -> None:
    """Issue 22: a typed request crosses the broker as JSON and arrives typed; one that does
    not fit the protocol's type hints is refused on one line, as the caller's mistake."""
    remote.ensure_collection("typed_request", {"dim": 4})
    assert remote.search("typed_request", SearchRequest(vector=[0.1, 0.2, 0.3, 0.4])) == []
    with pytest.raises(StoreError, match=r"^store call search: request\.vector: ") as refused:
        remote._call(STORE_QUERY_LIST, "search", "typed_request", {"vector": "up"})
    assert not refused.value.transient and "\n" not in str(refused.value)
    with pytest.raises(StoreError, match="store call groups failed: missing a required argument"):
        remote._call(STORE_QUERY_LIST, "groups", "typed_request")


def test_a_refusal_keeps_its_kind_across_the_broker(remote: RemoteAdmin) -> None:
    with pytest.raises(StoreError, match="does not exist") as mistake:
        remote.count("no_such_collection")
    assert not mistake.value.transient
    # A shard held by another process (as while its index is built): an outage, not a mistake.
    remote.ensure_collection("held", {"dim": 4})
    shard_path = get_settings().embedded_store_path / "collections" / "held" / "shard"
    shard = qdrant_edge.EdgeShard.load(str(shard_path))
    try:
        with pytest.raises(StoreError, match="held by another process") as outage:
            remote.search("held", SearchRequest(vector=np.ones(4).tolist()))
        assert outage.value.transient
    finally:
        shard.close()
    assert remote.count("held") == 0


def test_http_answers_503_for_an_outage_and_400_for_a_mistake(remote: RemoteAdmin) -> None:
    """The refusal's kind decides the status, not its wording."""
    from fastapi.testclient import TestClient

    from search_api.http import app as http_app

    api = TestClient(http_app)
    remote.ensure_collection("held_http", {"dim": 4})
    query = {"vector": [0.1, 0.2, 0.3, 0.4]}
    shard_path = get_settings().embedded_store_path / "collections" / "held_http" / "shard"
    shard = qdrant_edge.EdgeShard.load(str(shard_path))
    try:
        assert api.post("/collections/held_http/search", json=query).status_code == 503
    finally:
        shard.close()
    assert api.post("/collections/held_http/search", json=query).json() == []
    assert api.post("/collections/no_such_collection/search", json=query).status_code == 400


def test_up_refuses_a_local_mode_store_with_how_to_rebuild(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    ServerStore.local(tmp_path / "home" / "qdrant").close()  # what the old engine left
    done = run_medindex("up", env=base_env | {"MEDINDEX_HOME": str(tmp_path / "home")}, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "local mode" in lines[0] and "medindex reindex" in lines[0], lines


def test_a_search_is_answered_while_a_write_call_holds_the_store_worker(
    stack: RunningStack, remote: RemoteAdmin, tracker: JobTracker
) -> None:
    """Issue 23, item 2: queries have a thread of their own in the store worker. Here a write
    call keeps the store worker's writing thread in its backoff (another process holds the
    collection's shard, for up to the stack's 15 s retry budget), and searches of another
    collection are answered meanwhile, not after it."""
    remote.ensure_collection("writes_held", {"dim": 384})
    remote.ensure_collection("searched_meanwhile", {"dim": 384})
    tracker.create("writes_held", 16, {"collection": "writes_held"})
    failed_tries = log(stack).count("points failed (try 1)")
    with locked_store("writes_held"):
        send_points(point_message("writes_held", "writes_held", range(16)))
        wait_for_log(stack, "points failed (try 1)", failed_tries)
        started = time.monotonic()
        for _ in range(5):
            remote.search("searched_meanwhile", SearchRequest(vector=np.ones(384).tolist()))
        answered_in = time.monotonic() - started
        still_writing = tracker.progress("writes_held").indexed == 0
    assert still_writing and answered_in < 5, answered_in
    assert wait_for(tracker, "writes_held", lambda p: p.indexed == 16).failed == 0
