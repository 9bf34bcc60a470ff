"""The pipeline end to end on real parts: `medindex up` (Redis, Celery workers, embedded
Qdrant), `medindex ingest`, and `search_api` used as a module and as a CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
from support import N_IMAGES

from pipeline.fingerprint import INDEXES as FINGERPRINTS
from pipeline.samples import skin
from pipeline.schemas import point_id
from producers.harness import RunningStack
from search_api import Query, SearchClient

COLLECTION = "skin"


@pytest.fixture(scope="module")
def client(ingested: dict) -> SearchClient:
    return SearchClient()


@pytest.fixture(scope="module")
def table(dataset: Path) -> datasets.Dataset:
    return datasets.load_dataset(str(dataset), split="train").remove_columns("image")


@pytest.fixture(scope="module")
def all_points(client: SearchClient) -> list[dict]:
    page = client.scroll(COLLECTION, limit=1000)
    points = page["points"]
    while page["next_offset"]:
        page = client.scroll(COLLECTION, limit=1000, offset=page["next_offset"])
        points += page["points"]
    return points


def test_ingest_indexes_every_image(ingested: dict, client: SearchClient) -> None:
    assert ingested["indexed"] == N_IMAGES and ingested["failed"] == 0
    assert client.count(COLLECTION) == N_IMAGES


def test_the_skin_schema_is_recorded_and_indexed(client: SearchClient) -> None:
    """The sample's columns, typed from its features, with no label field (none is a class
    label column) until one is given; its payload indexes are exactly those fields."""
    schema = client.store.metadata(COLLECTION)["schema"]
    assert schema == {"fields": skin.payload_indexes(), "key_field": skin.KEY_FIELD,
                      "label_field": None}  # fmt: skip
    indexes = client.store.collection_info(COLLECTION)["payload_indexes"]
    assert indexes == schema["fields"] | FINGERPRINTS  # and the audit's fingerprints


def test_every_image_finds_itself_first(client: SearchClient, all_points: list[dict]) -> None:
    ids = [p["id"] for p in all_points]
    vectors = client.store.retrieve(COLLECTION, ids, with_vectors=True)
    for start in range(0, len(vectors), 100):
        chunk = vectors[start : start + 100]
        queries = [Query(vector=v["vector"], limit=1) for v in chunk]
        for point, hits in zip(chunk, client.search_batch(COLLECTION, queries), strict=True):
            assert hits[0]["id"] == point["id"] and hits[0]["score"] >= 0.999


def test_query_by_image_file_finds_that_image(
    client: SearchClient, dataset: Path, tmp_path: Path
) -> None:
    rows = datasets.load_dataset(str(dataset), split="train").select(range(0, N_IMAGES, 275))
    for row in rows:
        path = tmp_path / f"{row['image_id']}.jpg"
        row["image"].save(path, quality=95)
        hits = client.search(COLLECTION, Query(image=path, limit=3))
        assert hits[0]["payload"]["image_id"] == row["image_id"]
        assert hits[0]["score"] >= 0.99  # re-encoded JPEG: nearly, not exactly, the same pixels


def test_writes_are_full_batches_of_1000_but_the_last(ingested: dict) -> None:
    sizes = ingested["writes"]
    assert sum(sizes) == N_IMAGES, f"writes observed: {sizes}"
    assert all(size == 1000 for size in sizes[:-1]) and 0 < sizes[-1] <= 1000, sizes


FILTERS = {
    "match value": (
        {"must": [{"key": "sex", "match": {"value": "female"}}]},
        lambda p: p["sex"] == "female",
    ),
    "match any": (
        {"must": [{"key": "localization", "match": {"any": ["back", "trunk"]}}]},
        lambda p: p["localization"] in ("back", "trunk"),
    ),
    "match except": (
        {"must": [{"key": "dx", "match": {"except": ["melanocytic_Nevi"]}}]},
        lambda p: p["dx"] != "melanocytic_Nevi",
    ),
    "range": (
        {"must": [{"key": "age", "range": {"gte": 40, "lt": 60}}]},
        lambda p: "age" in p and 40 <= p["age"] < 60,
    ),
    "must not": (
        {"must_not": [{"key": "dx_type", "match": {"value": "histo"}}]},
        lambda p: p["dx_type"] != "histo",
    ),
    "should": (
        {
            "should": [
                {"key": "dx", "match": {"value": "melanoma"}},
                {"key": "age", "range": {"gte": 70}},
            ]
        },
        lambda p: p["dx"] == "melanoma" or p.get("age", -1) >= 70,
    ),
    "the notebook's female and 55+": (
        {
            "must": [{"key": "sex", "match": {"value": "female"}}],
            "should": [{"key": "age", "range": {"gte": 55.0}}],
        },
        lambda p: p["sex"] == "female" and p.get("age", -1) >= 55,
    ),
    "is empty (unknown age)": ({"must": [{"is_empty": {"key": "age"}}]}, lambda p: "age" not in p),
}


@pytest.mark.parametrize("name", FILTERS)
def test_filtered_search_returns_only_matches(
    name: str, client: SearchClient, all_points: list[dict]
) -> None:
    filter, holds = FILTERS[name]
    expected = sum(holds(p["payload"]) for p in all_points)
    assert expected > 0, "the sample data must exercise this filter"
    assert client.count(COLLECTION, filter) == expected
    query = Query(point_id=all_points[0]["id"], filter=filter, limit=50)
    hits = client.search(COLLECTION, query)
    assert len(hits) == min(50, expected)
    assert all(holds(h["payload"]) for h in hits)


def test_has_id_include_and_exclude(client: SearchClient, all_points: list[dict]) -> None:
    chosen = [p["id"] for p in all_points[:5]]
    vector = Query(point_id=all_points[10]["id"], limit=20)
    vector.filter = {"must": [{"has_id": chosen}]}
    assert {h["id"] for h in client.search(COLLECTION, vector)} == set(chosen)
    vector.filter = {"must_not": [{"has_id": chosen}]}
    assert not {h["id"] for h in client.search(COLLECTION, vector)} & set(chosen)


def test_score_threshold_and_payload_selection(
    client: SearchClient, all_points: list[dict]
) -> None:
    anchor = all_points[3]["id"]
    hits = client.search(COLLECTION, Query(point_id=anchor, limit=100))
    threshold = hits[20]["score"]
    above = client.search(COLLECTION, Query(point_id=anchor, limit=100, score_threshold=threshold))
    assert above and all(h["score"] >= threshold for h in above) and len(above) <= 21
    only = client.search(
        COLLECTION, Query(point_id=anchor, limit=3, with_payload={"include": ["dx"]})
    )
    assert all(set(h["payload"]) == {"dx"} for h in only)
    without = client.search(
        COLLECTION, Query(point_id=anchor, limit=3, with_payload={"exclude": ["source", "age"]})
    )
    assert all("source" not in h["payload"] and "age" not in h["payload"] for h in without)


def test_batch_of_queries_each_with_its_own_filter_and_limit(
    client: SearchClient, all_points: list[dict]
) -> None:
    anchor = all_points[0]["id"]
    queries = [
        Query(
            point_id=anchor, limit=3, filter={"must": [{"key": "sex", "match": {"value": "male"}}]}
        ),
        Query(
            point_id=anchor,
            limit=5,
            filter={"must": [{"key": "dx", "match": {"value": "melanoma"}}]},
        ),
    ]
    males, melanomas = client.search_batch(COLLECTION, queries)
    assert len(males) == 3 and all(h["payload"]["sex"] == "male" for h in males)
    assert len(melanomas) == 5 and all(h["payload"]["dx"] == "melanoma" for h in melanomas)


def test_groups_and_recommendations(client: SearchClient, all_points: list[dict]) -> None:
    anchor = all_points[0]["id"]
    groups = client.groups(COLLECTION, Query(point_id=anchor), group_by="dx", groups=7)
    assert len({g["group"] for g in groups}) == len(groups) == 7
    assert all(h["payload"]["dx"] == g["group"] for g in groups for h in g["hits"])
    positive, negative = [p["id"] for p in all_points[:2]], [all_points[2]["id"]]
    hits = client.recommend(COLLECTION, positive, negative, limit=10)
    assert len(hits) == 10 and not {h["id"] for h in hits} & set(positive + negative)


def test_missing_age_stays_missing(client: SearchClient, table: datasets.Dataset) -> None:
    unknown = sum(age is None or math.isnan(age) for age in table["age"])
    known_zero = sum(age == 0 for age in table["age"])
    assert unknown
    # An unknown age stored as 0 would match this range.
    assert client.count(COLLECTION, {"must": [{"key": "age", "range": {"lte": 0}}]}) == known_zero
    assert client.count(COLLECTION, {"must": [{"is_empty": {"key": "age"}}]}) == unknown


def test_ingesting_again_changes_nothing(
    stack: RunningStack, dataset: Path, client: SearchClient, all_points: list[dict]
) -> None:
    before = client.store.retrieve(
        COLLECTION, [p["id"] for p in all_points[:20]], with_vectors=True
    )
    again = stack.medindex(
        "ingest", "--dataset", str(dataset), "--collection", COLLECTION, "--json"
    )
    assert again.returncode == 0, again.stderr
    assert again.json()["indexed"] == N_IMAGES
    assert client.count(COLLECTION) == N_IMAGES
    after = client.store.retrieve(COLLECTION, [p["id"] for p in before], with_vectors=True)
    # The same vectors, up to float rounding of multi-threaded CPU kernels.
    np.testing.assert_allclose(
        [p["vector"] for p in after], [p["vector"] for p in before], rtol=0, atol=1e-5
    )


def test_cli_search_by_id_and_filter(
    stack: RunningStack, dataset: Path, table: datasets.Dataset
) -> None:
    some_id = point_id(str(dataset.resolve()), "train", table[17]["image_id"])
    result = stack.medindex("search", "--collection", COLLECTION, "--id", some_id, "--json")
    assert result.returncode == 0, result.stderr
    hits = result.json()
    assert hits[0]["id"] == some_id and hits[0]["score"] >= 0.999
    assert set(hits[0]) == {"id", "score", "payload"}
    female = json.dumps({"must": [{"key": "sex", "match": {"value": "female"}}]})
    result = stack.medindex(
        "search", "--collection", COLLECTION, "--id", some_id, "--filter", female, "--json"
    )
    assert result.returncode == 0, result.stderr
    assert result.json() and all(h["payload"]["sex"] == "female" for h in result.json())
