"""Every seed's data through the real stack: X-rays with a CSV of findings (table), BraTS-style
NIfTI cases (nifti), DICOM studies (dicom). Per format: ingest -> count, self-hit, filters on
the derived fields; for DICOM, no identifying value anywhere medindex writes."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
from redis.client import NEVER_DECODE
from support import png

from pipeline.fingerprint import INDEXES as FINGERPRINTS
from pipeline.progress import connect_redis
from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import identifying_values, write_dicom
from pipeline.samples.xray import write_xray
from pipeline.settings import get_settings
from producers.harness import RunningStack
from search_api import SearchClient
from search_api.facets import collection_view

N_XRAYS = 40
N_CASES = 6  # the last has no mask, the one before an all-zero mask
N_DICOM = 12
DICOM_SEED = 5


def ingest(stack: RunningStack, *args: str) -> dict:
    result = stack.medindex("ingest", *args, "--json")
    assert result.returncode == 0, result.stderr
    return result.json() | {"stderr": result.stderr}


def all_points(collection: str, with_vectors: bool = False) -> list[dict]:
    client = SearchClient()
    points = client.scroll(collection, limit=1000)["points"]
    if with_vectors:
        points = client.store.retrieve(collection, [p["id"] for p in points], with_vectors=True)
    return points


def assert_self_hit(collection: str, point: dict) -> None:
    from search_api.client import Query

    hits = SearchClient().search(collection, Query(point_id=point["id"], limit=3))
    assert hits[0]["id"] == point["id"] and hits[0]["score"] > 0.999


def assert_indexes_follow_schema(collection: str) -> dict:
    store = SearchClient().store
    schema = store.metadata(collection)["schema"]
    assert store.collection_info(collection)["payload_indexes"] == schema["fields"] | FINGERPRINTS
    return schema


@pytest.fixture(scope="module")
def xrays(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    table = write_xray(tmp_path_factory.mktemp("xray") / "chestxray14", N_XRAYS, seed=3)
    summary = ingest(stack, "--dataset", str(table), "--collection", "xray")
    return {"table": table, "summary": summary}


def test_xrays_with_a_csv_of_findings(xrays: dict) -> None:
    assert "format: table (detected" in xrays["summary"]["stderr"]
    assert xrays["summary"]["indexed"] == N_XRAYS
    schema = assert_indexes_follow_schema("xray")
    assert schema["label_field"] == "finding_labels"
    assert schema["fields"]["finding_labels"] == "keyword"
    assert schema["fields"]["patient_age"] == "integer"
    points = all_points("xray")
    assert len(points) == N_XRAYS
    assert_self_hit("xray", points[0])
    # Several findings per image: match.any works on each label, and an age range beside it.
    wanted = {"Effusion", "Cardiomegaly", "Infiltration"}
    flt = {
        "must": [
            {"key": "finding_labels", "match": {"any": sorted(wanted)}},
            {"key": "patient_age", "range": {"gte": 30, "lte": 80}},
        ]
    }
    from search_api.client import Query

    hits = SearchClient().search("xray", Query(point_id=points[0]["id"], filter=flt, limit=50))
    expected = [
        p
        for p in points
        if wanted & set(p["payload"]["finding_labels"])
        and 30 <= p["payload"].get("patient_age", -1) <= 80
    ]
    assert expected and len(hits) == len(expected)
    for hit in hits:
        assert wanted & set(hit["payload"]["finding_labels"])
        assert 30 <= hit["payload"]["patient_age"] <= 80


def test_a_re_sorted_csv_rewrites_the_same_points(stack: RunningStack, xrays: dict) -> None:
    before = {p["id"] for p in all_points("xray")}
    table: Path = xrays["table"]
    with table.open(newline="") as file:
        header, *rows = list(csv.reader(file))
    random.Random(1).shuffle(rows)
    with table.open("w", newline="") as file:
        csv.writer(file, lineterminator="\n").writerows([header, *rows])
    ingest(stack, "--dataset", str(table), "--collection", "xray")
    assert {p["id"] for p in all_points("xray")} == before


def test_the_same_png_in_a_table_and_in_an_hf_dataset_gives_the_same_vector(
    stack: RunningStack, xrays: dict, tmp_path: Path
) -> None:
    images = sorted((xrays["table"].parent / "images_001" / "images").glob("*.png"))[:4]
    folder = tmp_path / "as_hf" / "data"
    folder.mkdir(parents=True)
    rows = {"image": [str(p) for p in images], "image_index": [p.name for p in images]}
    features = datasets.Features(
        {"image": datasets.Image(), "image_index": datasets.Value("string")}
    )
    datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "train.parquet")
    ingest(stack, "--dataset", str(folder.parent), "--collection", "xray_as_hf")
    as_table = {
        p["payload"]["image_index"]: p["vector"] for p in all_points("xray", with_vectors=True)
    }
    as_hf = all_points("xray_as_hf", with_vectors=True)
    assert len(as_hf) == len(images)
    for point in as_hf:
        other = as_table[point["payload"]["image_index"]]
        assert np.allclose(point["vector"], other, atol=1e-5)


@pytest.fixture(scope="module")
def brains(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_brain_mri(tmp_path_factory.mktemp("brats") / "brats", N_CASES, seed=2)
    summary = ingest(
        stack, "--dataset", str(root), "--collection", "brain",
        "--labels-csv", str(root / "labels.csv"),
    )  # fmt: skip
    return {"root": root, "summary": summary}


def test_brain_mri_cases_with_tumour_masks(brains: dict) -> None:
    assert "format: nifti (detected" in brains["summary"]["stderr"]
    assert brains["summary"]["indexed"] == N_CASES * 4  # four modalities a case
    schema = assert_indexes_follow_schema("brain")
    assert schema["label_field"] == "tumour_class"
    points = all_points("brain")
    assert_self_hit("brain", points[0])
    choices = {p["payload"]["slice_choice"] for p in points}
    assert choices == {"largest_tumour", "middle"}  # a case without a mask: the middle slice
    classes = {p["payload"].get("tumour_class") for p in points}
    assert {"glioblastoma", "low_grade_glioma", "meningioma"} <= classes
    client = SearchClient()
    flair = {"must": [{"key": "modality", "match": {"value": "flair"}}]}
    assert client.count("brain", flair) == N_CASES
    big = {"must": [{"key": "tumour_area_mm2", "range": {"gt": 0}}]}
    assert client.count("brain", big) == sum(
        1 for p in points if p["payload"].get("tumour_area_mm2", 0) > 0
    )
    from search_api.client import Query

    groups = client.groups("brain", Query(point_id=points[0]["id"]), "tumour_class", groups=5)
    assert {g["group"] for g in groups} >= {"glioblastoma", "low_grade_glioma", "meningioma"}


def test_the_page_offers_ranges_of_numbers_not_of_lists(brains: dict) -> None:
    """A volume's shape and voxel size are lists of numbers: matched, never ranged."""
    view = collection_view("brain")
    ranged = {field.name for field in view.range_fields()}
    assert {"slice_index", "tumour_area_mm2"} <= ranged
    assert not ranged & {"volume_shape", "voxel_size_mm"}
    assert {"volume_shape", "voxel_size_mm"} <= {field.name for field in view.fields}


def test_a_folder_of_bare_images_says_its_points_carry_only_source(
    stack: RunningStack, tmp_path: Path
) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    for i in range(3):
        (folder / f"scan-{i}.png").write_bytes(png(i)["bytes"])
    summary = ingest(stack, "--dataset", str(folder), "--collection", "bare")
    assert "carry no field but `source`" in summary["stderr"]


def test_medindex_image_gives_back_the_slice_that_was_embedded(
    stack: RunningStack, brains: dict, tmp_path: Path
) -> None:
    """The picture `medindex image` writes, queried with, finds its own point (the same slice,
    window and crop as at ingest, from the point's `source` reference alone)."""
    from search_api.client import Query

    for point in all_points("brain")[:3]:
        out = tmp_path / f"{point['id']}.png"
        result = stack.medindex("image", "--collection", "brain", "--id", point["id"],
                                "--out", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        hits = SearchClient().search("brain", Query(image=out, limit=1))
        assert hits[0]["id"] == point["id"] and hits[0]["score"] > 0.999


@pytest.fixture(scope="module")
def dicoms(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_dicom(tmp_path_factory.mktemp("dicom") / "studies", N_DICOM, seed=DICOM_SEED)
    result = stack.medindex("ingest", "--dataset", str(root), "--collection", "dicom", "--json")
    assert result.returncode == 0, result.stderr
    return {"root": root, "summary": result.json() | {"stderr": result.stderr}}


def test_dicom_studies_are_indexed_without_identifying_values(
    stack: RunningStack, dicoms: dict
) -> None:
    summary = dicoms["summary"]
    assert "format: dicom (detected" in summary["stderr"]
    assert summary["failed"] == 1  # the structured report: no pixel data
    assert summary["indexed"] == N_DICOM - 1
    schema = assert_indexes_follow_schema("dicom")
    assert schema["label_field"] == "modality"
    points = all_points("dicom")
    assert_self_hit("dicom", points[0])
    client = SearchClient()
    assert {p["payload"]["modality"] for p in points} >= {"CT", "MR"}
    ct = {"must": [{"key": "modality", "match": {"value": "CT"}}]}
    assert client.count("dicom", ct) == sum(p["payload"]["modality"] == "CT" for p in points)
    # Identity kept as keyed hashes: one patient's images can still be filtered.
    patient = points[0]["payload"]["patient"]
    mine = {"must": [{"key": "patient", "match": {"value": patient}}]}
    assert 0 < client.count("dicom", mine) < len(points)
    # No identifying value in the payloads, Redis (job state, failure reports) or the logs.
    report = stack.medindex("report", summary["job_id"], "--json")
    redis = connect_redis(get_settings().broker_url)
    stored = [json.dumps(p) for p in points] + [report.stdout + report.stderr]
    for key in redis.scan_iter():
        stored += [key, _redis_value(redis, key)]  # the client decodes: text already
    stored.append(stack.log.read_text(errors="replace"))
    text = "\n".join(stored).upper()
    for value in identifying_values(DICOM_SEED):
        assert value.upper() not in text, value


def test_a_dicom_file_is_a_query_made_by_its_reader(dicoms: dict) -> None:
    """`medindex search --image scan.dcm` and the HTTP upload: the DICOM reader makes the
    query's picture as at ingest, so each file finds its own point; the file without pixel
    data is refused with its reason."""
    from search_api.client import Query, QueryError

    found = refused = 0
    for path in sorted(dicoms["root"].rglob("*.dcm")):
        try:
            hits = SearchClient().search("dicom", Query(image=path, limit=1))
        except QueryError as exc:
            assert "pixel data" in str(exc)
            refused += 1
            continue
        assert hits[0]["score"] > 0.999
        found += 1
    assert (found, refused) == (N_DICOM - 1, 1)


def _redis_value(redis: object, key: str) -> str:
    kind = redis.type(key)
    if kind == "string":  # a text, or a job's rows as a bitmap: read as bytes, shown as text
        raw = redis.execute_command("GET", key, **{NEVER_DECODE: []})
        return raw.decode(errors="replace")
    if kind == "hash":
        return repr(redis.hgetall(key))
    if kind == "list":
        return repr(redis.lrange(key, 0, -1))
    if kind == "set":
        return repr(redis.smembers(key))
    if kind == "zset":
        return repr(redis.zrange(key, 0, -1))
    return ""
