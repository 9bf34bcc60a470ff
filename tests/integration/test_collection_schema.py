"""The schema comes from the data, through the real stack: recorded with the collection, its
payload indexes made from it, the label field driving quality, keys that do not move, the
picture of a point, and the collection's own fields in `medindex search`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from support import TYPED, assert_one_line_error, png, sample_dataset, write_typed

from pipeline.fingerprint import INDEXES as FINGERPRINTS
from pipeline.images import decode_rgb
from pipeline.quality import knn_agreement, label_field
from pipeline.samples.dicom import write_dicom
from pipeline.samples.skin import LABEL_FIELD
from pipeline.schemas import point_id
from pipeline.sources import resolve
from pipeline.sources.hf import DatasetSource
from producers.harness import RunningStack
from search_api import SearchClient
from search_api.cli import shown_fields

N = 24
EXPECTED_FIELDS = {
    "note": "keyword",
    "scan_name": "keyword",
    "grade": "float",  # --index grade:float over the detected integer
    "score": "float",
    "taken": "datetime",
    "urgent": "bool",
    "findings": "keyword",
    "kind": "keyword",
}


@pytest.fixture(scope="module")
def typed(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every column type, ingested with one index type overridden."""
    folder = write_typed(tmp_path_factory.mktemp("typed") / "typed", list(range(N)))
    result = stack.medindex(
        "ingest", "--dataset", str(folder), "--collection", "typed", "--index", "grade:float",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "format: hf (detected" in result.stderr
    return {"folder": folder, "summary": result.json()}


def ids_of(collection: str) -> set[str]:
    return {p["id"] for p in SearchClient().scroll(collection, limit=1000)["points"]}


def test_the_schema_is_recorded_and_the_indexes_follow_it(typed: dict) -> None:
    assert typed["summary"]["indexed"] == N
    store = SearchClient().store
    assert store.metadata("typed")["schema"] == {
        "fields": EXPECTED_FIELDS,
        "key_field": "scan_name",
        "label_field": "kind",
    }
    assert store.collection_info("typed")["payload_indexes"] == EXPECTED_FIELDS | FINGERPRINTS
    # The indexes answer filters on each kind of field.
    client = SearchClient()
    when = {"key": "taken", "range": {"gte": "2024-01-11T00:00:00Z"}}
    assert client.count("typed", {"must": [when]}) == N - 10
    assert client.count("typed", {"must": [{"key": "findings", "match": {"any": ["nodule"]}}]}) == 8
    assert client.count("typed", {"must": [{"key": "kind", "match": {"value": "malignant"}}]}) == 12


def test_a_label_field_given_by_flag_drives_quality(
    stack: RunningStack, typed: dict, tmp_path: Path
) -> None:
    store = SearchClient().store
    quality, sample = knn_agreement(store, "typed", label_field(store.metadata("typed")))
    assert 0 <= quality <= 1 and len(sample) == N  # the class label column, found alone
    skin = sample_dataset(tmp_path / "skin", 40, seed=3)
    for collection, flags in (("unlabelled", []), ("labelled", ["--label-field", LABEL_FIELD])):
        result = stack.medindex(
            "ingest", "--dataset", str(skin), "--collection", collection, *flags
        )
        assert result.returncode == 0, result.stderr
    assert label_field(store.metadata("unlabelled")) is None
    assert knn_agreement(store, "unlabelled", None) == (None, [])  # not computed
    assert label_field(store.metadata("labelled")) == LABEL_FIELD
    quality, sample = knn_agreement(store, "labelled", LABEL_FIELD)
    assert 0 <= quality <= 1 and len(sample) == 40


def test_a_second_source_adds_fields_and_a_conflicting_type_is_refused(
    stack: RunningStack, typed: dict, tmp_path: Path
) -> None:
    skin = sample_dataset(tmp_path / "skin", 20, seed=4)
    result = stack.medindex("ingest", "--dataset", str(skin), "--collection", "typed")
    assert result.returncode == 0, result.stderr
    store = SearchClient().store
    schema = store.metadata("typed")["schema"]
    assert schema["fields"]["localization"] == "keyword" and schema["fields"]["age"] == "float"
    assert schema["label_field"] == "kind" and schema["key_field"] == "scan_name"  # kept
    assert store.collection_info("typed")["payload_indexes"] == schema["fields"] | FINGERPRINTS
    refused = stack.medindex(
        "ingest", "--dataset", str(typed["folder"]), "--collection", "typed", "--index",
        "grade:keyword",
    )  # fmt: skip
    assert_one_line_error(refused, "field 'grade' is keyword in this source but float")
    assert result.returncode == 0 and SearchClient().count("typed") == N + 20


def test_re_sorted_rows_rewrite_the_same_points(stack: RunningStack, tmp_path: Path) -> None:
    folder = write_typed(tmp_path / "resorted", list(range(N)))
    for order in (list(range(N)), list(reversed(range(N)))):
        write_typed(folder, order)
        result = stack.medindex("ingest", "--dataset", str(folder), "--collection", "resorted")
        assert result.returncode == 0, result.stderr
        assert SearchClient().count("resorted") == N
    expected = {point_id(str(folder.resolve()), "train", f"scan-{i}") for i in range(N)}
    assert ids_of("resorted") == expected


def test_the_recorded_key_field_keys_later_ingests(stack: RunningStack, tmp_path: Path) -> None:
    """Issue 21, item 6: the key column detected at the first ingest keys the later ones, even
    when the distinct counts that chose it change; another `--key-column` is refused."""
    folder = tmp_path / "flipping"
    (folder / "data").mkdir(parents=True)
    text = datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "file_name": text, "image_id": text})

    def write(file_names: list[str]) -> None:
        rows = {"image": [png(i) for i in range(N)], "file_name": file_names,
                "image_id": [f"img-{i}" for i in range(N)]}  # fmt: skip
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            folder / "data" / "train-00000-of-00001.parquet"
        )

    write([f"f-{i}" for i in range(N - 1)] + ["f-0"])  # fewer distinct names than ids
    assert DatasetSource(resolve(str(folder))).schema.key_field == "image_id"
    ingest = ("ingest", "--dataset", str(folder), "--collection", "flipping")
    assert (result := stack.medindex(*ingest)).returncode == 0, result.stderr
    write([f"f-{i}" for i in range(N)])  # as many: the first column named like a key wins
    assert DatasetSource(resolve(str(folder))).schema.key_field == "file_name"
    assert (result := stack.medindex(*ingest)).returncode == 0, result.stderr
    expected = {point_id(str(folder.resolve()), "train", f"img-{i}") for i in range(N)}
    assert ids_of("flipping") == expected  # the same points, none doubled
    refused = stack.medindex(*ingest, "--key-column", "file_name")
    assert_one_line_error(refused, "collection 'flipping' keys its images by 'image_id'")
    assert ids_of("flipping") == expected


def test_a_dataset_without_a_key_column_keys_each_image_by_its_bytes(
    stack: RunningStack, tmp_path: Path
) -> None:
    folder = tmp_path / "unnamed"
    (folder / "data").mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "kind": TYPED["kind"]})
    rows = {"image": [png(i) for i in range(N)], "kind": [i % 2 for i in range(N)]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        folder / "data" / "train-00000-of-00001.parquet"
    )
    result = stack.medindex("ingest", "--dataset", str(folder), "--collection", "unnamed")
    assert result.returncode == 0, result.stderr
    hashes = [hashlib.sha256(png(i)["bytes"]).hexdigest()[:32] for i in range(N)]
    assert ids_of("unnamed") == {point_id(str(folder.resolve()), "train", h) for h in hashes}


def test_medindex_image_writes_the_picture_that_was_embedded(
    stack: RunningStack, typed: dict, tmp_path: Path
) -> None:
    pid = point_id(str(typed["folder"].resolve()), "train", "scan-5")
    out = tmp_path / "scan-5.png"
    result = stack.medindex("image", "--collection", "typed", "--id", pid, "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = decode_rgb(png(5)["bytes"], max_pixels=10**6, max_bytes=10**6)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    missing = stack.medindex(
        "image", "--collection", "typed", "--id", point_id("x", "train", "y"), "--out", str(out)
    )
    assert_one_line_error(missing, "no point")


def test_medindex_search_shows_the_collections_own_fields(stack: RunningStack, typed: dict) -> None:
    pid = point_id(str(typed["folder"].resolve()), "train", "scan-5")
    result = stack.medindex("search", "--collection", "typed", "--id", pid, "--limit", "3")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "score" in line)
    for name in ("scan_name", "grade", "taken", "findings", "kind"):
        assert name in header
    assert "source" not in header and "scan-5" in result.stdout
    # A collection recorded before schemas: the fields its hits carry, less `source`.
    hits = [{"payload": {"a": 1, "source": {}}}, {"payload": {"b": [1, 2]}}]
    assert shown_fields({}, hits) == ["a", "b"]


def test_bad_format_arguments_fail_on_one_line(stack: RunningStack, tmp_path: Path) -> None:
    table = tmp_path / "findings.csv"
    table.write_text("Image Index,Finding Labels\na.png,Mass\n")
    (tmp_path / "nothing").mkdir()
    cases = [
        (["--dataset", str(table), "--format", "nifti"], "is not nifti data"),
        (["--dataset", str(tmp_path), "--format", "tiff-stack"], "unknown format 'tiff-stack'"),
        (["--dataset", "someone/dataset", "--format", "tiff-stack"], "unknown format"),
        (["--dataset", str(tmp_path / "nothing")], "no reader recognises it"),
        (["--dataset", str(tmp_path), "--index", "grade"], "expected FIELD:TYPE"),
        (["--dataset", str(tmp_path), "--nifti-crop-margin", "-1"], "--nifti-crop-margin"),
    ]
    for argv, words in cases:
        result = stack.medindex("ingest", *argv, "--collection", "refused")
        assert_one_line_error(result, words)
        assert result.returncode == 2
    # DICOM de-identified (the default) with no key for its hashes: refused before any job.
    studies = write_dicom(tmp_path / "studies", 6, seed=1)
    keyless = {k: v for k, v in stack.env.items() if k != "MEDINDEX_DEID_KEY"}
    result = stack.medindex("ingest", "--dataset", str(studies), "--collection", "refused",
                            env=keyless)  # fmt: skip
    assert_one_line_error(result, "MEDINDEX_DEID_KEY")
    assert "refused" not in SearchClient().store.collections()
