"""Bad input: one clear line, a non-zero exit, no traceback, and nothing indexed is harmed."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pytest
from pydicom.data import get_testdata_file
from support import assert_one_line_error, free_port

from pipeline.samples.bombs import dicom_deflate_bomb
from pipeline.samples.dicom import write_dicom
from producers.harness import RunningStack, run_medindex
from search_api import SearchClient


@pytest.fixture(scope="module")
def indexed_count(ingested: dict) -> int:
    return SearchClient().count("skin")


@pytest.fixture(scope="module", autouse=True)
def nothing_harmed(indexed_count: int) -> None:
    yield
    assert SearchClient().count("skin") == indexed_count


def test_dataset_folder_that_does_not_exist(stack: RunningStack) -> None:
    result = stack.medindex("ingest", "--dataset", "./no/such/dir", "--collection", "skin")
    assert_one_line_error(result, "does not exist")


def test_dataset_without_an_image_column(stack: RunningStack, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict({"image_id": ["a", "b"], "dx": ["melanoma", "melanoma"]}).to_parquet(
        tmp_path / "data" / "train-00000-of-00001.parquet"
    )
    result = stack.medindex("ingest", "--dataset", str(tmp_path), "--collection", "skin")
    assert_one_line_error(result, "no image column")


def test_redis_not_running(stack: RunningStack, dataset: Path) -> None:
    env = stack.env | {"MEDINDEX_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_medindex("ingest", "--dataset", str(dataset), "--collection", "skin", env=env)
    assert_one_line_error(result, "cannot reach Redis")


def test_qdrant_url_that_refuses(stack: RunningStack, dataset: Path) -> None:
    env = stack.env | {"MEDINDEX_QDRANT_URL": f"http://127.0.0.1:{free_port()}"}
    result = run_medindex("ingest", "--dataset", str(dataset), "--collection", "skin", env=env)
    assert_one_line_error(result, "cannot reach Qdrant")
    result = run_medindex("search", "--collection", "skin", "--vector", "[0.1, 0.2]", env=env)
    assert_one_line_error(result, "cannot reach Qdrant")


@pytest.mark.parametrize(
    ("filter", "words"),
    [
        (
            '{"must": [{"key": "sex", "match": {"valu": "female"}}]',
            ("malformed filter", "not JSON"),
        ),
        ('{"must": [{"key": "sex", "match": {"valu": "female"}}]}', ("malformed filter", "must.0")),
        ('{"must": "sex"}', ("malformed filter", "must")),
    ],
)
def test_malformed_filter(stack: RunningStack, filter: str, words: tuple[str, ...]) -> None:
    result = stack.medindex(
        "search", "--collection", "skin", "--vector", "[0.1]", "--filter", filter
    )
    assert_one_line_error(result, *words)


def test_unknown_collection_and_point(stack: RunningStack, ingested: dict) -> None:
    result = stack.medindex("search", "--collection", "nope", "--vector", "[0.1]")
    assert_one_line_error(result, "nope")
    missing = "00000000-0000-0000-0000-000000000000"
    result = stack.medindex("search", "--collection", "skin", "--id", missing)
    assert_one_line_error(result, "no point")


@pytest.mark.parametrize("vector", ['["x"]', '{"a": 1}', "3", "[]"])
def test_malformed_vector(stack: RunningStack, vector: str) -> None:
    result = stack.medindex("search", "--collection", "skin", "--vector", vector)
    assert_one_line_error(result, "vector")


def test_limit_is_bounded(stack: RunningStack, ingested: dict) -> None:
    result = stack.medindex(
        "search", "--collection", "skin", "--vector", "[0.1]", "--limit", "5000"
    )
    assert_one_line_error(result, "limit")


def test_a_dicom_export_accounts_for_every_file_it_holds(
    stack: RunningStack, tmp_path: Path
) -> None:
    """pydicom's own test files (four without the File Meta header, eight DICOMDIRs, READMEs,
    reports) and a deflated file that inflates to 64 MiB: every file but a DICOMDIR is indexed
    or failed with its reason, and `ingest` says what it set aside."""
    export = tmp_path / "export"
    shutil.copytree(Path(get_testdata_file("CT_small.dcm")).parent, export)
    (export / "deflated.dcm").write_bytes(dicom_deflate_bomb(64 * 1024 * 1024))
    files = [path for path in export.rglob("*") if path.is_file()]
    directories = [path for path in files if path.name.startswith("DICOMDIR")]
    result = stack.medindex("ingest", "--dataset", str(export), "--collection", "export", "--json")
    assert result.returncode == 0, result.stderr
    summary = result.json()
    assert summary["indexed"] + summary["failed"] == len(files) - len(directories)
    assert f"{len(files)} files looked at" in result.stderr
    assert f"{len(directories)} DICOMDIR set aside" in result.stderr
    report = stack.medindex("report", summary["job_id"], "--json").json()
    reasons = [failure["reason"] for failure in report["failures"]]
    # Without the header: two RT plans and a structure set (no image), and no_meta.dcm, whose
    # dataset starts a byte late, among the files that are no DICOM (READMEs, JSON, dumps).
    assert sum(reason.endswith("; no File Meta header") for reason in reasons) == 3
    not_dicom = "not a DICOM file (no File Meta header, and no dataset at its start)"
    assert reasons.count(not_dicom) == 10
    assert "deflated dataset inflates to over 33554432 bytes (the limit)" in reasons


def test_search_checks_files_collection_and_filter_before_the_model(
    stack: RunningStack, ingested: dict, tmp_path: Path
) -> None:
    """The cheap checks come first: the query file (before anything connects), then the
    collection, then the filter (a field the collection lacks, a range nothing is in); only a
    query that passes them all loads the model."""
    empty, text = tmp_path / "empty.png", tmp_path / "notes.png"
    empty.write_bytes(b"")
    text.write_text("not a picture")
    unknown_field = '{"must": [{"key": "diagnosis", "match": {"value": "melanoma"}}]}'
    inverted = '{"must": [{"key": "age", "range": {"gte": 60, "lte": 20}}]}'
    cases = [
        (["--collection", "nope", "--image", str(empty)], ("empty.png", "is empty")),
        (["--collection", "nope", "--image", str(text)], ("nope", "does not exist")),
        (["--image", str(text), "--filter", unknown_field], ("no field 'diagnosis'", " dx,")),
        (["--image", str(text), "--filter", inverted], ("inverted range on 'age'",)),
        (["--image", str(text)], ("not a readable image",)),
    ]
    for argv, words in cases:
        argv = argv if "--collection" in argv else ["--collection", "skin", *argv]
        assert_one_line_error(stack.medindex("search", *argv), *words)


def test_an_ingest_in_which_every_image_failed_exits_non_zero(
    stack: RunningStack, tmp_path: Path
) -> None:
    (tmp_path / "scans").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "scans" / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    table = tmp_path / "findings.csv"
    table.write_text("path,finding\nscans/a.png,mass\nscans/b.png,none\nscans/c.png,mass\n")
    result = stack.medindex("ingest", "--dataset", str(table), "--collection", "broken", "--json")
    assert result.returncode == 1, result.stderr
    assert result.json()["indexed"] == 0 and result.json()["failed"] == 3
    summary = next(line for line in result.stderr.splitlines() if "every image failed" in line)
    assert summary.startswith("every image failed: 3x ")
    status = stack.medindex("status", result.json()["job_id"], "--json")
    assert status.json()["jobs"][0]["state"] == "failed"


def test_dicom_is_refused_when_the_workers_hold_another_deid_key(
    stack: RunningStack, tmp_path: Path
) -> None:
    """The producer asks the embed workers for their key's fingerprint before it enqueues."""
    studies = write_dicom(tmp_path / "studies", 6, seed=3)
    other = stack.env | {"MEDINDEX_DEID_KEY": "not-the-workers-key"}
    result = stack.medindex("ingest", "--dataset", str(studies), "--collection", "keyed",
                            env=other)  # fmt: skip
    assert_one_line_error(result, "embed worker", "another MEDINDEX_DEID_KEY")
    assert "keyed" not in SearchClient().store.collections()
