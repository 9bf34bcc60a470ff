"""`medindex audit` through the session stack, on each format with duplicates and leaks planted:
byte copies, lossless and lossy re-encodes, a resize, a DICOM re-exported with a new patient
id and UIDs, an instance stored twice in its series and a slice alike but not the same (an
adjacent slice, reported apart), one patient in two splits, a label conflict. The CSVs must
name each planted pair with its tier and flags, and nothing else as a duplicate; a collection
that is not there is a one-line error."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jobs import encoded, planted_skin, wait_for, write_points
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid
from support import assert_one_line_error

from pipeline.audit_report import last_report
from pipeline.progress import JobTracker, connect_redis
from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.samples.xray import HEADER, write_xray
from pipeline.settings import get_settings
from pipeline.store import Admin
from producers.harness import Result, RunningStack


def ingest(stack: RunningStack, *args: str, failed: int = 0) -> None:
    result = stack.medindex("ingest", *args, "--json")
    assert result.returncode == 0, result.stderr
    assert result.json()["failed"] == failed, result.stderr


def audit(stack: RunningStack, collection: str, out: Path, *args: str) -> dict:
    result = stack.medindex("audit", "--collection", collection, "--out", str(out), "--json", *args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    files = json.loads((out / "summary.json").read_text())
    assert (
        files["counts"] == summary["counts"]
        and files["points_audited"] == summary["points_audited"]
    )
    assert (out / "nn_histogram.png").stat().st_size > 0
    return summary


def rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


def duplicates(out: Path) -> dict[frozenset, dict]:
    """Pairs in duplicate clusters, by their two keys."""
    return {frozenset((r["key_a"], r["key_b"])): r for r in rows(out / "pairs.csv") if r["cluster"]}


@pytest.fixture(scope="module")
def xray_audit(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Twelve X-rays in train, four in test; planted: a byte copy, a PNG recompressed, a JPEG
    re-encode, a resize, a copy with other findings (train), a byte copy of a train image and
    another follow-up of a train patient (test)."""
    root = tmp_path_factory.mktemp("audit-xray")
    table = write_xray(root / "x", 16, seed=21)
    folder = table.parent / "images_001" / "images"
    lines = table.read_text().splitlines()[1:]
    cells = [line.split(",") for line in lines]
    original = {c[0]: Image.open(folder / c[0]) for c in cells}
    names = list(original)

    def planted(row: list[str], name: str, data: bytes, labels: str | None = None) -> str:
        (folder / name).write_bytes(data)
        return ",".join([name, labels or row[1], *row[2:]])

    byte_copy = (folder / names[0]).read_bytes()
    train = [
        *lines[:12],
        planted(cells[0], "copy.png", byte_copy),
        planted(cells[1], "recompressed.png", encoded(original[names[1]], "PNG", compress_level=9)),
        planted(cells[2], "reencoded.jpg", encoded(original[names[2]], "JPEG", quality=90)),
        planted(cells[3], "resized.png", encoded(original[names[3]].resize((768, 768)), "PNG")),
        planted(cells[4], "relabelled.png", (folder / names[4]).read_bytes(), "Hernia|Edema"),
    ]
    moved = next(c for c in cells[12:] if any(o[3] == c[3] for o in cells[:12]))
    test = [*lines[12:], planted(cells[5], "leaked.png", (folder / names[5]).read_bytes())]
    for name, content in (("train.csv", train), ("test.csv", test)):
        (table.parent / name).write_text("\n".join([HEADER, *content]) + "\n")
    for split in ("train", "test"):
        ingest(stack, "--dataset", str(table.parent / f"{split}.csv"), "--split", split,
               "--collection", "audit-xray")  # fmt: skip
    out = root / "report"
    return {"summary": audit(stack, "audit-xray", out), "out": out, "names": names,
            "moved_patient": moved[3]}  # fmt: skip


def test_xray_duplicates_leaks_and_conflicts_are_named(xray_audit: dict) -> None:
    out, names = xray_audit["out"], xray_audit["names"]
    found = duplicates(out)
    expected = {
        ("copy.png", names[0]): "bytes",
        ("recompressed.png", names[1]): "pixels",
        ("reencoded.jpg", names[2]): "phash",
        ("resized.png", names[3]): "phash",
        ("relabelled.png", names[4]): "bytes",
        ("leaked.png", names[5]): "bytes",
    }
    for (a, b), tier in expected.items():
        pair = found[frozenset((a, b))]
        assert pair["tier"] == tier, (a, pair)
        assert pair["cross_patient"] == "false"
    assert found[frozenset(("relabelled.png", names[4]))]["label_conflict"] != "0"
    assert found[frozenset(("copy.png", names[0]))]["label_conflict"] == "0"
    assert found[frozenset(("leaked.png", names[5]))]["cross_split"] == "true"
    assert found[frozenset(("copy.png", names[0]))]["cross_split"] == "false"
    # Nothing but the planted pairs is a duplicate by its fingerprints (the embedding tier's
    # model has random weights: its pairs are not asserted).
    hashed = {k for k, r in found.items() if r["tier"] != "embedding"}
    assert hashed == {frozenset(k) for k in expected}
    leaks = rows(out / "leaks.csv")
    assert {"patient", "image"} <= {r["kind"] for r in leaks}
    patients = {r["patient"] for r in leaks if r["kind"] == "patient"}
    assert xray_audit["moved_patient"] in patients
    assert any(r["kind"] == "image" and {r["key_a"], r["key_b"]} == {"leaked.png", names[5]}
               for r in leaks)  # fmt: skip
    keep = {r["key"]: r for r in rows(out / "keep.csv")}
    assert len(keep) == 16 + 6
    clusters = rows(out / "clusters.csv")
    assert sum(r["keep"] == "false" for r in keep.values()) == sum(
        int(c["size"]) - 1 for c in clusters
    )
    counts = xray_audit["summary"]["counts"]
    assert counts["patients_across_splits"] == len(patients) >= 1
    assert counts["image_leaks_across_splits"] >= 1 and counts["label_conflicts"] >= 1
    assert counts["moved_to_another_split"] >= 1
    assert xray_audit["summary"]["fields"]["patient"] == "patient_id"


def test_the_proposed_split_has_no_patient_in_two(xray_audit: dict, stack: RunningStack) -> None:
    from search_api import SearchClient

    points = SearchClient().scroll("audit-xray", limit=1000)["points"]
    patient_of = {p["id"]: p["payload"]["patient_id"] for p in points}
    splits: dict[str, set[str]] = {}
    for r in rows(xray_audit["out"] / "keep.csv"):
        splits.setdefault(patient_of[r["point"]], set()).add(r["proposed_split"])
    assert all(len(s) == 1 for s in splits.values())


def test_skin_copies_with_another_diagnosis_conflict(stack: RunningStack, tmp_path: Path) -> None:
    folder = tmp_path / "skin"
    first, second = planted_skin(folder, 24, 31)
    ingest(stack, "--dataset", str(folder), "--collection", "audit-skin", "--label-field", "dx")
    summary = audit(stack, "audit-skin", tmp_path / "report")
    found = duplicates(tmp_path / "report")
    copy = found[frozenset(("ISIC_copy", first["image_id"]))]
    assert copy["tier"] == "bytes" and copy["label_conflict"] == "1"
    assert found[frozenset(("ISIC_reencoded", second["image_id"]))]["tier"] == "phash"
    assert summary["fields"]["group"] == "lesion_id"  # one lesion's images: no duplicates
    assert summary["counts"]["label_conflicts"] >= 1


def test_dicom_reexport_under_another_patient_and_a_repeated_instance(
    stack: RunningStack, tmp_path: Path
) -> None:
    folder = write_dicom(tmp_path / "dicom", 8, 17)
    files = sorted(folder.rglob("*.dcm"))
    ct = [p for p in files if dcmread(p, stop_before_pixels=True).Modality == "CT"]
    ds = dcmread(ct[0])
    ds.PatientID, ds.PatientName = "PID-OTHER", "OTHER^PATIENT"
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, tag, generate_uid())
    (folder / "reexport").mkdir()
    ds.save_as(folder / "reexport" / "IM_0001.dcm")
    repeated = dcmread(ct[1])  # the same slice stored twice in its series: a duplicate
    repeated.SOPInstanceUID, repeated.InstanceNumber = generate_uid(), 99
    repeated.save_as(ct[1].parent / "IM_0099.dcm")
    near = dcmread(ct[2])  # a slice alike but not the same (noise): an adjacent slice
    values = near.pixel_array.astype(np.int64) + np.random.default_rng(0).integers(
        -2, 3, near.pixel_array.shape
    )
    limits = np.iinfo(near.pixel_array.dtype)
    near.PixelData = (
        np.clip(values, limits.min, limits.max).astype(near.pixel_array.dtype).tobytes()
    )
    near.SOPInstanceUID, near.InstanceNumber = generate_uid(), 98
    near.save_as(ct[2].parent / "IM_0098.dcm")
    # The sample's structured report has no pixels: it fails alone.
    ingest(stack, "--dataset", str(folder), "--collection", "audit-dicom", failed=1)
    summary = audit(stack, "audit-dicom", tmp_path / "report")
    pairs = rows(tmp_path / "report" / "pairs.csv")
    reexport = [p for p in pairs if p["tier"] == "pixels" and p["cross_patient"] == "true"]
    assert len(reexport) == 1 and reexport[0]["cluster"] and reexport[0]["same_volume"] == "false"
    twice = [p for p in pairs if p["tier"] == "pixels" and p["same_volume"] == "true"]
    assert len(twice) == 1 and twice[0]["cluster"]  # the same slice twice: a duplicate
    alike = [p for p in pairs if p["tier"] == "phash" and p["same_volume"] == "true"]
    assert alike and all(p["cluster"] == "" for p in alike)  # adjacent: reported apart
    assert summary["counts"]["images_across_patients"] >= 1
    assert summary["counts"]["adjacent_slices"] >= 1
    assert summary["fields"]["patient"] == "patient"


def test_nifti_case_copied_under_another_id(stack: RunningStack, tmp_path: Path) -> None:
    folder = write_brain_mri(tmp_path / "mri", 3, 23)
    case = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    copy = folder / "COPY_CASE"
    copy.mkdir()
    for file in case.iterdir():
        (copy / file.name.replace(case.name, "COPY_CASE")).write_bytes(file.read_bytes())
    ingest(stack, "--dataset", str(folder), "--collection", "audit-mri")
    summary = audit(stack, "audit-mri", tmp_path / "report", "--patient-field", "case_id")
    pairs = [p for p in rows(tmp_path / "report" / "pairs.csv") if p["tier"] == "pixels"]
    assert pairs and all(p["cross_patient"] == "true" and p["cluster"] for p in pairs)
    assert {
        frozenset(k.split("/")[0].split("_")[0] for k in (p["key_a"], p["key_b"])) for p in pairs
    }
    assert summary["counts"]["images_across_patients"] == len(pairs)


def test_an_unknown_collection_is_one_line(stack: RunningStack) -> None:
    assert_one_line_error(stack.medindex("audit", "--collection", "no-such"), "no-such")
    result = stack.medindex("audit", "--collection", "audit-xray", "--phash-distance", "9")
    assert_one_line_error(result, "phash-distance")


def test_ingest_with_audit_adds_the_new_points(stack: RunningStack, tmp_path: Path) -> None:
    """`medindex ingest --audit`: the second ingest's points alone are queried, against the
    whole collection, and added to its audit; a copy of a first-ingest image is found."""
    table = write_xray(tmp_path / "x", 10, seed=33)
    folder = table.parent / "images_001" / "images"
    lines = table.read_text().splitlines()[1:]
    first_image = lines[0].split(",")[0]
    (folder / "again.png").write_bytes((folder / first_image).read_bytes())
    again = ",".join(["again.png", *lines[0].split(",")[1:]])
    for name, content in (("first.csv", lines[:6]), ("second.csv", [*lines[6:], again])):
        (table.parent / name).write_text("\n".join([HEADER, *content]) + "\n")
    queried = []
    for name in ("first.csv", "second.csv"):
        result = stack.medindex(
            "ingest", "--dataset", str(table.parent / name), "--collection", "audit-grow", "--audit"
        )
        assert result.returncode == 0, result.stderr
        queried.append(result.stderr)
    assert "6 points (6 queried)" in queried[0]
    assert "11 points (5 queried)" in queried[1]
    report = last_report(connect_redis(get_settings().broker_url), "audit-grow")
    pairs = {frozenset((p["key_a"], p["key_b"])): p for p in report["pairs"]}
    assert pairs[frozenset(("again.png", first_image))]["tier"] == "bytes"


def test_an_audit_whose_shards_fail_says_so_and_resumes(
    stack: RunningStack, tracker: JobTracker, store: Admin, dataset: Path
) -> None:
    """A shard the store refuses (its collection deleted under the audit) fails its points with
    the reason: the audit ends on one line naming its resume, reports nothing, and once the
    points are back `--job-id` asks only what failed."""
    points = 320  # 80 shards of 4
    write_points(store, tracker, "vanishing", points)
    argv = ("audit", "--collection", "vanishing", "--shard-size", "4", "--job-id", "failing")
    audit = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv],
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(tracker, "failing", lambda progress: progress.indexed > 0)
    store.delete_collection("vanishing")
    _, stderr = audit.communicate(timeout=240)
    resume = "medindex audit --collection vanishing --job-id failing"
    assert_one_line_error(Result(audit.returncode, "", stderr), "could not be asked",
                          "neighbour queries failed", f"`{resume}` asks them again")  # fmt: skip
    failed = tracker.progress("failing")
    assert failed.failed > 0 and failed.done == points
    assert last_report(tracker.redis, "vanishing") is None
    # An ingest's commands refuse the audit's job, and leave its failures be.
    ingest = ["ingest", "--dataset", str(dataset), "--job-id", "failing"]
    for wrong in (["retry", "failing"], ingest):
        assert_one_line_error(stack.medindex(*wrong), "is an audit", resume)
    assert tracker.progress("failing").failed == failed.failed

    write_points(store, tracker, "vanishing", points)  # the same points again
    resumed = stack.medindex(*argv, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json()["points_audited"] == points
    progress = tracker.progress("failing")
    assert (progress.indexed, progress.failed) == (points, 0)
