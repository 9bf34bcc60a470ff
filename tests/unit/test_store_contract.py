"""One contract for every store backend: the same calls give the same answers.

Backends: Qdrant Edge (the embedded default) and qdrant-client's local mode, which stands in for
a Qdrant server's API (no Qdrant server can run where medindex is tested). Both search exactly
at this size, so results match id for id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.schemas import point_id
from pipeline.store import (
    NeighbourRequest,
    RecommendRequest,
    SearchRequest,
    Store,
    StoreError,
    finish_bulk,
)
from pipeline.store.edge import EdgeStore
from pipeline.store.server import ServerStore

DIM = 16
N = 300
SEXES = ("male", "female", "unknown")
DXS = ("melanoma", "nevus", "keratosis", "carcinoma")


def _points() -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(11)
    ids = [point_id("contract", "train", f"img-{i}") for i in range(N)]
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    payloads = []
    for i in range(N):
        payload = {"image_id": f"img-{i}", "dx": DXS[i % 4], "sex": SEXES[i % 3]}
        if i % 7:  # missing metadata stays missing
            payload["age"] = float(5 * (i % 18))
        payloads.append(payload)
    return ids, vectors, payloads


IDS, VECTORS, PAYLOADS = _points()
QUERY = VECTORS[0].tolist()
INDEXES = {"dx": "keyword", "sex": "keyword", "age": "float"}
SCHEMA = {"fields": INDEXES, "key_field": "image_id", "label_field": "dx"}
SPEC = {"dim": DIM, "model": "m", "pooling": "mean", "schema": SCHEMA, "payload_indexes": INDEXES}

FILTERS = [
    None,
    {"must": [{"key": "sex", "match": {"value": "female"}}, {"key": "age", "range": {"gte": 55}}]},
    {"must": [{"key": "dx", "match": {"any": ["melanoma", "carcinoma"]}}]},
    {"must": [{"key": "dx", "match": {"except": ["nevus"]}}]},
    {"should": [{"key": "sex", "match": {"value": "male"}}, {"key": "age", "range": {"lt": 10}}]},
    {"must_not": [{"key": "sex", "match": {"value": "unknown"}}]},
    {"must": [{"is_empty": {"key": "age"}}]},
    {"must": [{"has_id": IDS[:40]}], "must_not": [{"has_id": IDS[:5]}]},
    {"must": [{"key": "age", "range": {"gt": 20, "lte": 60}}], "must_not": [{"has_id": IDS[:3]}]},
]


@pytest.fixture(params=["edge", "edge-int8", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Edge as made by default, and quantized (int8, originals on disk, searches rescored on
    them); local mode: the server's API."""
    opened = {
        "edge": lambda: EdgeStore(tmp_path / "edge"),
        "edge-int8": lambda: EdgeStore(tmp_path / "edge", "int8", on_disk=True),
        "local": lambda: ServerStore.local(tmp_path / "local"),
    }[request.param]()
    opened.ensure_collection("c", SPEC)
    opened.upsert("c", IDS, VECTORS, PAYLOADS)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The server's API (local mode), queried beside each backend."""
    local = ServerStore.local(tmp_path_factory.mktemp("reference"))
    local.ensure_collection("c", SPEC)
    local.upsert("c", IDS, VECTORS, PAYLOADS)
    yield local
    local.close()


def ids_scores(hits: list[dict]) -> list[tuple[str, float]]:
    return [(h["id"], round(h["score"], 4)) for h in hits]


@pytest.mark.parametrize("where", FILTERS, ids=range(len(FILTERS)))
def test_filtered_search_count_and_threshold(store: Store, reference: Store, where: dict) -> None:
    for threshold in (None, 0.2):
        request = SearchRequest(vector=QUERY, filter=where, limit=15, score_threshold=threshold)
        got, want = store.search("c", request), reference.search("c", request)
        assert ids_scores(got) == ids_scores(want)
        assert [h["payload"] for h in got] == [h["payload"] for h in want]
    assert store.count("c", where) == reference.count("c", where)


@pytest.mark.parametrize("where", FILTERS, ids=range(len(FILTERS)))
def test_facets_and_ranges_equal_the_counts(store: Store, where: dict) -> None:
    """Issue 23, item 4: each value's count over the whole collection, filter-aware, as
    counting the matching points' payloads gives, most first; a numeric field's lowest and
    highest value among them."""
    matching = [hit["payload"] for hit in store.scroll("c", where, limit=N)["points"]]
    assert len(matching) == store.count("c", where)
    for key in ("dx", "sex"):
        counts = Counter(payload[key] for payload in matching)
        facets = store.facet("c", key, where)
        assert {hit["value"]: hit["count"] for hit in facets} == counts
        assert [hit["count"] for hit in facets] == sorted(counts.values(), reverse=True)
        assert store.facet("c", key, where, limit=2) == facets[:2]
    ages = [payload["age"] for payload in matching if "age" in payload]
    assert store.value_range("c", "age", where) == ([min(ages), max(ages)] if ages else None)


def test_payload_selectors_and_vectors(store: Store, reference: Store) -> None:
    for selector in (False, ["dx"], {"include": ["dx", "age"]}, {"exclude": ["image_id"]}):
        request = SearchRequest(vector=QUERY, limit=5, with_payload=selector)
        got, want = store.search("c", request), reference.search("c", request)
        assert [h["payload"] for h in got] == [h["payload"] for h in want]
    hit = store.search("c", SearchRequest(vector=QUERY, limit=1, with_vectors=True))[0]
    assert np.allclose(hit["vector"], VECTORS[0] / np.linalg.norm(VECTORS[0]), atol=1e-5)


def test_batches_groups_and_recommend(store: Store, reference: Store) -> None:
    """A batch's queries each with their own options (HNSW's beam among them: a collection
    this small is searched exactly, whatever the beam)."""
    queries = [
        SearchRequest(
            vector=VECTORS[i].tolist(), filter=FILTERS[i % len(FILTERS)], limit=3 + i,
            hnsw_ef=(None, 16, 300)[i % 3],
        )
        for i in range(5)
    ]  # fmt: skip
    got, want = store.search_batch("c", queries), reference.search_batch("c", queries)
    assert [ids_scores(h) for h in got] == [ids_scores(h) for h in want]
    for limit, size, where in ((4, 1, None), (3, 5, FILTERS[1]), (10, 2, FILTERS[5])):
        request = SearchRequest(vector=QUERY, filter=where, limit=limit)
        got_groups = store.groups("c", request, "dx", size)
        want_groups = reference.groups("c", request, "dx", size)
        assert [(g["group"], ids_scores(g["hits"])) for g in got_groups] == [
            (g["group"], ids_scores(g["hits"])) for g in want_groups
        ]
    for negative in ([], IDS[3:5]):
        examples = RecommendRequest(positive=IDS[:2], negative=negative, filter=FILTERS[3], limit=8)
        got_hits = store.recommend("c", examples)
        want_hits = reference.recommend("c", examples)
        assert ids_scores(got_hits) == ids_scores(want_hits)


def test_neighbours_are_searches_from_stored_points(store: Store, reference: Store) -> None:
    """Issue 24: an audit's shard in one call: each request is the search from its point's
    own vector, its filter, limit and payload kept, the point itself left out; a point that
    does not exist has none."""
    rows = [0, 1, 2, 3, 4, 5, 9]
    asked = [
        NeighbourRequest(
            id=IDS[i].upper(),
            filter=FILTERS[i % len(FILTERS)],
            limit=4,
            with_payload=["dx"],
            hnsw_ef=64,
        )
        for i in rows
    ]
    gone = NeighbourRequest(id=point_id("contract", "train", "gone"))
    got = store.neighbours("c", [*asked, gone])
    searches = []
    for i in rows:
        itself = {"must_not": [{"has_id": [IDS[i]]}]}
        where = FILTERS[i % len(FILTERS)]
        searches.append(
            SearchRequest(
                vector=VECTORS[i].tolist(),
                filter={"must": [where], **itself} if where else itself,
                limit=4,
                with_payload=["dx"],
            )
        )
    want = reference.search_batch("c", searches)
    assert [ids_scores(h) for h in got[:-1]] == [ids_scores(h) for h in want]
    assert [[h["payload"] for h in hits] for hits in got[:-1]] == [
        [h["payload"] for h in hits] for hits in want
    ]
    assert all(len(hits) == 4 for hits in want) and got[-1] == []


def test_groups_and_recommend_honour_the_whole_request(store: Store, reference: Store) -> None:
    """A threshold, a payload choice and vectors hold for groups and recommendations as for a
    search (Edge groups on whole payloads, then shows the ones asked for)."""
    shown = {"score_threshold": 0.47, "with_payload": {"include": ["dx"]}, "with_vectors": True}
    request = SearchRequest(vector=QUERY, limit=3, **shown)
    got_groups = store.groups("c", request, "sex", 4)
    want_groups = reference.groups("c", request, "sex", 4)
    assert [g["group"] for g in got_groups] == [g["group"] for g in want_groups]
    for got, want in zip(got_groups, want_groups, strict=True):
        assert_same_hits(got["hits"], want["hits"])
    examples = RecommendRequest(positive=IDS[:2], negative=IDS[3:5], limit=8, **shown)
    assert_same_hits(store.recommend("c", examples), reference.recommend("c", examples))


def assert_same_hits(got: list[dict], want: list[dict]) -> None:
    assert ids_scores(got) == ids_scores(want) and got
    assert [h["payload"] for h in got] == [h["payload"] for h in want]
    assert all(set(h["payload"]) <= {"dx"} for h in got)
    assert np.allclose([h["vector"] for h in got], [h["vector"] for h in want], atol=1e-5)


def test_retrieve_scroll_and_info(store: Store) -> None:
    found = store.retrieve("c", IDS[:3], with_vectors=True)
    assert {h["id"] for h in found} == set(IDS[:3])
    assert all(len(h["vector"]) == DIM for h in found)
    seen, offset = [], None
    while True:
        page = store.scroll("c", FILTERS[2], limit=40, offset=offset)
        seen += [h["id"] for h in page["points"]]
        if (offset := page["next_offset"]) is None:
            break
    assert len(seen) == len(set(seen)) == store.count("c", FILTERS[2])
    info = store.collection_info("c")
    assert (info["dim"], info["points"]) == (DIM, N)
    assert info["indexed_points"] + info["unindexed_points"] == N
    assert info["metadata"]["model"] == "m"


def test_aliases_versions_and_metadata(store: Store) -> None:
    store.ensure_collection("c__v2", SPEC, bulk=True)
    store.upsert("c__v2", IDS[:50], VECTORS[:50], PAYLOADS[:50])
    finish_bulk(store, "c__v2")
    store.switch_alias("c_alias", "c")
    assert store.count("c_alias") == N
    store.switch_alias("c_alias", "c__v2")
    assert store.aliases() == {"c_alias": "c__v2"}
    assert store.count("c_alias") == 50
    with pytest.raises(StoreError, match="made with model"):  # an alias is its collection
        store.ensure_collection("c_alias", SPEC | {"model": "other"})
    first = SearchRequest(vector=QUERY, limit=3)
    assert ids_scores(store.search("c_alias", first)) == ids_scores(store.search("c__v2", first))
    store.set_metadata("c__v2", {"status": "verified"})
    assert store.metadata("c_alias") == store.metadata("c__v2")
    assert store.metadata("c_alias")["status"] == "verified"
    assert sorted(store.collections()) == ["c", "c__v2"]
    store.delete_collection("c")
    assert store.collections() == ["c__v2"]


def test_a_second_source_adds_its_fields_to_the_collection(store: Store) -> None:
    """An existing collection given a spec with new fields records them and indexes them;
    what it recorded before stays."""
    wider = SCHEMA | {"fields": INDEXES | {"grade": "integer"}}
    store.ensure_collection("c", SPEC | {"schema": wider, "payload_indexes": wider["fields"]})
    recorded = store.metadata("c")
    assert recorded["schema"] == wider and recorded["payload_indexes"]["grade"] == "integer"
    assert recorded["model"] == "m" and "created_at" in recorded
    store.upsert("c", [point_id("contract", "train", "graded")], VECTORS[:1], [{"grade": 3}])
    assert store.count("c", {"must": [{"key": "grade", "range": {"gte": 3}}]}) == 1


def test_the_engine_holds_the_indexes_the_spec_names_and_no_others(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "indexes")  # local mode holds none: it scans
    store.ensure_collection("bare", {"dim": DIM})
    assert store.collection_info("bare")["payload_indexes"] == {}
    store.ensure_collection("c", SPEC)
    assert store.collection_info("c")["payload_indexes"] == INDEXES
    store.ensure_collection("c", SPEC | {"payload_indexes": INDEXES | {"grade": "integer"}})
    assert store.collection_info("c")["payload_indexes"] == INDEXES | {"grade": "integer"}
    store.close()


def test_refusals_keep_their_kind(store: Store) -> None:
    with pytest.raises(StoreError, match="holds 16-d vectors") as refused:
        store.ensure_collection("c", SPEC | {"dim": 8})
    assert not refused.value.transient
    with pytest.raises(StoreError, match="made with model") as refused:
        store.ensure_collection("c", SPEC | {"model": "other"})
    with pytest.raises(StoreError) as refused:
        store.upsert("gone", IDS[:1], VECTORS[:1], PAYLOADS[:1])
    assert not refused.value.transient
    assert "gone" not in store.collections()  # a write never creates a collection
    nan = VECTORS[:2].copy()
    nan[1, 3] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.upsert("c", IDS[:2], nan, PAYLOADS[:2])
    malformed = {"must": [{"key": "age", "range": {"gte": "old"}}]}
    with pytest.raises(StoreError, match="malformed filter"):
        store.search("c", SearchRequest(vector=QUERY, filter=malformed))
    # A range nothing can fall in is a mistake, in a nested clause too; an equal pair is not.
    for bounds in ({"gte": 60, "lte": 20}, {"gt": 5, "lt": 5}, {"gte": 5, "lt": 5}):
        inverted = {"should": [{"must": [{"key": "age", "range": bounds}]}]}
        with pytest.raises(StoreError, match="inverted range on 'age'"):
            store.count("c", filter=inverted)
    assert store.count("c", filter={"must": [{"key": "age", "range": {"gte": 5, "lte": 5}}]}) >= 0


# --- Edge only -------------------------------------------------------------------------------


def test_a_local_mode_folder_is_refused_with_how_to_rebuild(tmp_path: Path) -> None:
    ServerStore.local(tmp_path / "qdrant").close()
    with pytest.raises(StoreError, match=r"local mode.*medindex reindex") as refused:
        EdgeStore(tmp_path / "qdrant")
    assert "\n" not in str(refused.value)


def test_one_process_per_embedded_store(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path / "edge")
    code = (
        "from pathlib import Path; from pipeline.store.edge import EdgeStore; EdgeStore(Path(%r))"
    )
    second = subprocess.run(
        [sys.executable, "-c", code % str(tmp_path / "edge")], capture_output=True, text=True
    )
    assert "is in use by another process" in second.stderr
    first.close()


WRITE_THEN_DIE = """
import os, signal, sys
from pathlib import Path
import numpy as np
from pipeline.store.edge import EdgeStore
store = EdgeStore(Path(sys.argv[1]), flush_s=3600)  # never flushed: the log alone holds them
store.ensure_collection("d", {"dim": 16})
ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(1000)]
vectors = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32)
store.upsert("d", ids, vectors, [{"i": i} for i in range(1000)])
print("acknowledged", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_acknowledged_write_survives_a_killed_process(tmp_path: Path) -> None:
    """`upsert` returns once Edge's write-ahead log holds the points, flushed or not: the
    process killed right after loses none of them, and the vectors are the ones written."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE_THEN_DIE, str(tmp_path / "edge")],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert done.returncode == -signal.SIGKILL and "acknowledged" in done.stdout, done.stderr
    reopened = EdgeStore(tmp_path / "edge")
    assert reopened.count("d") == 1000
    [last] = reopened.retrieve("d", ["00000000-0000-0000-0000-000000000999"], with_vectors=True)
    assert last["payload"] == {"i": 999}
    vectors = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32)  # the script's
    unit = vectors[999] / np.linalg.norm(vectors[999])  # cosine: Qdrant keeps them normalised
    assert np.allclose(last["vector"], unit, atol=1e-6)
    reopened.close()


def test_a_written_collection_is_flushed_once_quiet(tmp_path: Path) -> None:
    """Writes are flushed to disk at most `flush_s` apart: the maintenance thread flushes a
    collection that was written and then left alone."""
    store = EdgeStore(tmp_path / "edge", flush_s=0.3, index_poll_s=0.05)
    store.ensure_collection("d", {"dim": 16})
    vectors = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    store.upsert("d", [str(i) for i in range(10)], vectors, [{}] * 10)
    assert "d" in store._unflushed
    deadline = time.monotonic() + 10
    while "d" in store._unflushed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "d" not in store._unflushed
    store.close()


class CountingShard:
    """An Edge shard that counts the points its queries return (everything else passes)."""

    def __init__(self, shard: object) -> None:
        self.shard, self.points_read = shard, 0

    def query(self, request: object) -> list:
        points = self.shard.query(request)
        self.points_read += len(points)
        return points

    def __getattr__(self, name: str) -> object:
        return getattr(self.shard, name)


def test_groups_read_a_bounded_part_of_the_collection(tmp_path: Path) -> None:
    """Fewer values than groups asked for (the page asks for 100): the groups found, from a
    read or two, not the whole collection with its payloads."""
    n = 3000
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [point_id("groups", "train", f"img-{i}") for i in range(n)]
    labels = [DXS[i % 3] for i in range(n)]
    query = vectors[0]
    scores = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    rare = int(np.argmin(scores))  # a fourth value, on the point farthest from the query
    labels[rare] = "rare"
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("g", SPEC)
    store.upsert("g", ids, vectors, [{"dx": label} for label in labels])
    shard = store._shards["g"] = CountingShard(store._shards["g"])
    groups = store.groups("g", SearchRequest(vector=query.tolist(), limit=100), "dx", group_size=1)
    best = {label: max(np.flatnonzero(np.array(labels) == label), key=scores.__getitem__)
            for label in set(labels)}  # fmt: skip
    expected = sorted(best, key=lambda label: -scores[best[label]])
    assert [g["group"] for g in groups] == expected
    assert [g["hits"][0]["id"] for g in groups] == [ids[best[label]] for label in expected]
    assert shard.points_read <= 101 < n, shard.points_read  # 100 hits, then the rare one
    store.close()


def test_an_int8_collection_records_its_layout_and_keeps_its_recall(tmp_path: Path) -> None:
    """Issue 23, item 3: int8 scalar quantization on the embedded store, recorded like the
    server layout; once indexed, searches rescored on the originals find the exact top 10.

    Clustered vectors, as embeddings are: on unclustered Gaussian noise HNSW itself misses
    (measured here: recall@10 0.87 float32, 0.89 int8, the same graph settings)."""
    rng = np.random.default_rng(5)
    n, dim = 8000, 384  # 12 MB: above the size Qdrant indexes (and quantizes) from
    centres = rng.normal(size=(40, dim))
    noise = rng.normal(size=(n, dim))
    vectors = (centres[rng.integers(0, 40, n)] + noise).astype(np.float32)
    ids = [point_id("int8", "train", str(i)) for i in range(n)]
    store = EdgeStore(tmp_path / "edge", "int8", on_disk=True)
    store.ensure_collection("q", {"dim": dim}, bulk=True)
    store.upsert("q", ids, vectors, [{"i": i} for i in range(n)])
    finish_bulk(store, "q", timeout_s=300, poll_s=0.1)
    layout = store.metadata("q")["layout"]
    assert (layout["quantization"], layout["on_disk"]) == ("int8", True)
    quantized = list((tmp_path / "edge" / "collections" / "q").rglob("*quantized*"))
    assert quantized, "no quantized vectors on disk"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = []
    for q in range(50):
        exact = set(np.argsort(-unit @ unit[q])[:10])
        hits = store.search("q", SearchRequest(vector=vectors[q].tolist(), limit=10))
        found.append(len(exact & {h["payload"]["i"] for h in hits}) / 10)
    assert np.mean(found) >= 0.95, np.mean(found)
    store.close()
