"""Readers, one per format, behind one interface (`Source`): a row in, a key, a payload and
the 2-D picture to embed out. Everything downstream is the same for every format."""

from __future__ import annotations

import hashlib
import importlib
import threading
import time
from functools import lru_cache
from pathlib import Path

from pipeline.schemas import ReadOptions, SourceRef
from pipeline.sources.base import (
    Field,
    KeyCensus,
    Schema,
    Source,
    SourceError,
    SourceRow,
)

__all__ = [
    "READERS",
    "Field",
    "KeyCensus",
    "Schema",
    "Source",
    "SourceError",
    "SourceRow",
    "detect_format",
    "known_format",
    "open_source",
    "resolve",
    "source_class",
    "upload_format",
    "versioned",
]

VERSION_TTL_S = 5.0  # how often a reference without a version looks whether files changed
_OPENING = threading.Lock()


# format -> "module:class"; imported on demand (datasets, nibabel and pydicom load only where
# needed: `medindex status` and the search API start without them).
READERS = {
    "hf": "pipeline.sources.hf:DatasetSource",
    "table": "pipeline.sources.table:TableSource",
    "nifti": "pipeline.sources.nifti:NiftiSource",
    "dicom": "pipeline.sources.dicom:DicomSource",
}
# Asked in this order when `--format` is absent; `hf` (anything `datasets` loads) comes last.
DETECTION_ORDER = ("dicom", "nifti", "table", "hf")


def known_format(fmt: str) -> str:
    """`fmt`, if a reader reads it (checked without importing one)."""
    if fmt not in READERS:
        raise SourceError(f"unknown format {fmt!r} (one of: {', '.join(READERS)})")
    return fmt


def source_class(fmt: str) -> type[Source]:
    """The reader of a format."""
    module, name = READERS[known_format(fmt)].split(":")
    return getattr(importlib.import_module(module), name)


def detect_format(dataset: str) -> str:
    """The format of a `--dataset` argument: a hub id is `hf`; a local path, the first reader
    whose `detect` recognises it."""
    path = Path(dataset)
    if not path.exists():
        return "hf"
    for fmt in DETECTION_ORDER:
        if source_class(fmt).detect(path):
            return fmt
    raise SourceError(f"{dataset}: no reader recognises it (formats: {', '.join(READERS)})")


def upload_format(data: bytes) -> str | None:
    """The format of an uploaded query file whose reader makes its picture (`query_picture`):
    a DICOM or NIfTI file; None for an ordinary image. Each reader is asked (`sniff`)."""
    return next((fmt for fmt in DETECTION_ORDER if source_class(fmt).sniff(data)), None)


def resolve(
    dataset: str,
    split: str = "train",
    name: str | None = None,
    fmt: str | None = None,
    options: ReadOptions | None = None,
) -> SourceRef:
    """Turn a user's `--dataset` argument into a reference every worker can open."""
    path = Path(dataset).expanduser()
    if path.exists():
        dataset = str(path.resolve())
    elif dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise SourceError(f"dataset folder {dataset!r} does not exist")
    # Messages carry the name only where it differs: they stay small.
    return SourceRef(
        dataset=dataset,
        split=split,
        name=name if name != dataset else None,
        format=fmt or "hf",
        options=options or ReadOptions(),
    )


def open_source(ref: SourceRef) -> Source:
    """One open dataset per process and source, reused by every job. A job's reference names
    the version of the files its producer saw, so a job sent after they changed (fixed images
    sent again by `medindex retry`) opens them anew; a reference without one (the page's
    thumbnails) looks at the files once per period."""
    period = int(time.monotonic() // VERSION_TTL_S)
    version = ref.version or _timed_version(ref.dataset, period)
    # One opening at a time, the others then find it open: the search API's threads ask for a
    # page of thumbnails at once, and `datasets` cannot load in several threads (tqdm's shared
    # lock: "'tqdm' object has no attribute '_lock'").
    with _OPENING:
        return _open_source(ref, version)


@lru_cache(maxsize=8)
def _open_source(ref: SourceRef, version: str | None) -> Source:
    return source_class(ref.format)(ref)


@lru_cache(maxsize=64)
def _timed_version(dataset: str, _period: int) -> str | None:
    return local_version(dataset)


def local_version(dataset: str) -> str | None:
    """A digest of the sizes and times of a local dataset's files (a table file: those of its
    folder, where its images are); None for hub ids (they change by revision)."""
    path = Path(dataset)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        return None
    stats = ((str(p), p.stat()) for p in folder.rglob("*"))  # one stat a file: folders are big
    files = sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)
    return hashlib.sha1(repr(files).encode()).hexdigest()[:16]


def versioned(ref: SourceRef) -> SourceRef:
    """`ref` naming the version its local files have now: what a job carries to its worker."""
    return ref.model_copy(update={"version": local_version(ref.dataset)})
