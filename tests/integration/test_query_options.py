"""A DICOM or NIfTI query file is made into its picture with the read options the collection's
points record (their `source`), not the search process's settings: for each read option,
ingest with it, then query by each ingested file: its top hit is its own point (>= 0.999)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.schemas import ReadOptions, SourceRef
from pipeline.sources import open_source
from producers.harness import RunningStack
from search_api import Query, SearchClient

DICOM_FLAGS = {
    "defaults": [],
    "window-lung": ["--dicom-window", "lung"],
    "window-soft-tissue": ["--dicom-window", "soft_tissue"],
    "window-bone": ["--dicom-window", "bone"],
    "window-brain": ["--dicom-window", "brain"],
    "unit-series": ["--dicom-unit", "series"],
    "no-deidentify": ["--no-deidentify"],
}
# An uploaded volume comes without its mask: the cases here have none either, so the query
# and the point are the slice ingest makes of a case without a mask.
NIFTI_FLAGS = {
    "defaults": [],
    "two-unmasked-slices": ["--nifti-unmasked-slices", "2"],
    "three-unmasked-slices": ["--nifti-unmasked-slices", "3"],
    "crop-margin": ["--nifti-variant", "crop", "--nifti-crop-margin", "2"],
}


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dicom(tmp_path_factory.mktemp("dicom") / "studies", 12, seed=8)


@pytest.fixture(scope="module")
def nifti_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_brain_mri(tmp_path_factory.mktemp("brats") / "brats", 2, seed=4)
    for mask in root.rglob("*_seg.nii.gz"):
        mask.unlink()
    return root


def queried_points(stack: RunningStack, root: Path, collection: str, flags: list[str]) -> dict:
    """Ingest `root` with `flags`: each point a query by its file is to find -> that file (of
    a volume's spaced slices, the central one: what an uploaded volume is made into)."""
    done = stack.medindex("ingest", "--dataset", str(root), "--collection", collection, *flags)
    assert done.returncode == 0, done.stderr
    points = SearchClient().scroll(collection, limit=1000)["points"]
    recorded = points[0]["payload"]["source"]
    ref = SourceRef(
        dataset=recorded["dataset"],
        format=recorded["format"],
        options=ReadOptions(**recorded.get("options", {})),
    )
    source = open_source(ref)
    files = {}
    for point in points:
        row = point["payload"]["source"]["row"]
        if ref.format == "dicom":
            files[point["id"]] = root / source.instances[row].path
        elif (entry := source.entries[row]).part == (entry.parts - 1) // 2:
            files[point["id"]] = root / entry.path
    return files


def assert_each_file_finds_its_point(collection: str, files: dict[str, Path]) -> None:
    client = SearchClient()
    found = {}
    for point, path in files.items():
        (hit,) = client.search(collection, Query(image=path, limit=1))
        found[point] = (hit["id"], round(hit["score"], 4))
    missed = {p: hit for p, hit in found.items() if hit[0] != p or hit[1] < 0.999}
    assert not missed, f"{len(missed)} of {len(found)} files: {sorted(missed.values())[:3]}"


@pytest.mark.parametrize("name", DICOM_FLAGS)
def test_a_dicom_query_is_read_as_its_collection(
    stack: RunningStack, dicom_folder: Path, name: str
) -> None:
    files = queried_points(stack, dicom_folder, f"dicom-{name}", DICOM_FLAGS[name])
    assert_each_file_finds_its_point(f"dicom-{name}", files)


@pytest.mark.parametrize("name", NIFTI_FLAGS)
def test_a_nifti_query_is_read_as_its_collection(
    stack: RunningStack, nifti_folder: Path, name: str
) -> None:
    files = queried_points(stack, nifti_folder, f"nifti-{name}", NIFTI_FLAGS[name])
    assert len(files) == 8  # two cases, four modalities
    assert_each_file_finds_its_point(f"nifti-{name}", files)
