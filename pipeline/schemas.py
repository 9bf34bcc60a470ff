"""What travels on the queues: jobs carry references, point batches carry float32 bytes."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Fixed namespace: the same source and key give the same point id on every machine, forever.
POINT_NAMESPACE = uuid.UUID("6f1d3c1e-4a53-5b0e-9c36-6d6564696e64")
MAX_DIM = 65_536  # Qdrant's largest vector

# The read options' choices and bounds, shared with their defaults in `Settings`.
NiftiVariant = Literal["slice", "crop"]
CropMargin = Annotated[int, Field(ge=0, le=256)]
UnmaskedSlices = Annotated[int, Field(ge=1, le=64)]
DicomUnit = Literal["instance", "series"]
DicomWindow = Literal["file", "lung", "soft_tissue", "bone", "brain"]
# How a model's output becomes one vector (pipeline/model_info.py).
Pooling = Literal["mean", "cls", "pooler"]


def point_id(source_name: str, split: str, key: str) -> str:
    """Deterministic id, so a redelivered or re-run job rewrites the same points; the split is
    part of the identity, so `test` rows never overwrite `train` rows with the same key."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{source_name}/{split}/{key}"))


class ReadOptions(BaseModel):
    """How a reader makes a row's picture and payload: fixed when a job starts and sent with
    each of its jobs, so every worker (and `medindex image`, later) makes the same picture."""

    model_config = ConfigDict(frozen=True)

    # Each description is also the help of its `medindex ingest` / `reindex` flag.
    key_column: str | None = Field(
        None, description="the column naming each image (default: detected)"
    )
    image_column: str | None = Field(None, description="hf: image column; table: path column")
    image_root: str | None = Field(None, description="table: folder image paths are under")
    nifti_variant: NiftiVariant = Field(
        "slice", description="nifti: the whole slice, or a box round the tumour"
    )
    nifti_crop_margin: CropMargin = Field(8, description="voxels round a tumour")
    nifti_unmasked_slices: UnmaskedSlices = Field(
        1, description="slices of a case without mask: the middle one, or N spaced"
    )
    labels_csv: str | None = Field(None, description="nifti: a CSV of case -> tumour class")
    dicom_unit: DicomUnit = Field(
        "instance", description="dicom: each file, or a series' middle instance"
    )
    dicom_window: DicomWindow = Field(
        "file", description="dicom: the file's window, or a CT preset"
    )
    deidentify: bool = Field(
        True, description="DICOM: identifying tags never stored; identities as keyed hashes"
    )


class SourceRef(BaseModel):
    """Enough to open the same rows again on any worker."""

    model_config = ConfigDict(frozen=True)

    dataset: str  # a hub id, an absolute local folder, or an absolute table file
    split: str = "train"
    name: str | None = None  # the identity point ids derive from, when not `dataset` itself
    format: Literal["hf", "table", "nifti", "dicom"] = "hf"
    options: ReadOptions = ReadOptions()
    # The state of a local dataset's files when the producer sent the job (`local_version`): a
    # worker opens the source anew when it differs, so a retry after a fix reads the fix.
    version: str | None = None

    @property
    def identity(self) -> str:
        return self.name or self.dataset


class EmbedJob(BaseModel):
    """One unit of work on the `embed` queue: a shard of row indices, no pixels."""

    job_id: str
    collection: str
    source: SourceRef
    model: str
    pooling: str = "mean"
    rows: list[int] = Field(min_length=1)


class PointBatch(BaseModel):
    """Embedded points of one job on their way to the store."""

    # As JSON (points parked in Redis), the vectors travel as base64.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    job_id: str
    collection: str
    ids: list[str]
    rows: list[int]
    payloads: list[dict]
    vectors: bytes  # float32, row-major, len(ids) x dim
    dim: int = Field(ge=0, le=MAX_DIM)

    @model_validator(mode="after")
    def _one_of_each_per_point(self) -> PointBatch:
        """An id, a row, a payload and `dim` floats for every point: what writing (and
        splitting) a batch relies on."""
        points = len(self.ids)
        if (len(self.rows), len(self.payloads)) != (points, points):
            raise ValueError(f"{points} ids, {len(self.rows)} rows, {len(self.payloads)} payloads")
        if points and not self.dim:
            raise ValueError(f"{points} points of dim 0")
        if len(self.vectors) != 4 * points * self.dim:
            raise ValueError(
                f"vectors hold {len(self.vectors)} bytes, not {points} x {self.dim} float32"
            )
        return self

    @classmethod
    def build(
        cls,
        job: EmbedJob,
        ids: list[str],
        rows: list[int],
        payloads: list[dict],
        vectors: np.ndarray,
    ) -> PointBatch:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return cls(
            job_id=job.job_id,
            collection=job.collection,
            ids=ids,
            rows=rows,
            payloads=payloads,
            vectors=vectors.tobytes(),
            dim=int(vectors.shape[1]) if vectors.size else 0,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> PointBatch:
        return PointBatch.model_construct(
            job_id=self.job_id,
            collection=self.collection,
            ids=self.ids[start:stop],
            rows=self.rows[start:stop],
            payloads=self.payloads[start:stop],
            vectors=self.matrix()[start:stop].tobytes(),
            dim=self.dim,
        )

    def keys(self) -> list[str]:
        """The images' keys, for failure reports."""
        return [
            str(p.get("source", {}).get("key", row))
            for p, row in zip(self.payloads, self.rows, strict=True)
        ]

    def matrix(self) -> np.ndarray:
        return np.frombuffer(self.vectors, dtype=np.float32).reshape(len(self.ids), self.dim)


class UnwritablePoints(ValueError):
    """A point message that no write can take, with the job and rows it names (if it does)."""

    def __init__(self, reason: str, named: NamedRows | None = None) -> None:
        super().__init__(reason)
        self.named = named


class NamedRows(BaseModel):
    """What even a malformed point batch may tell: whose rows it holds."""

    job_id: str
    rows: list[int]


def read_points(message: object) -> PointBatch:
    """The point batch an upsert message carries, checked whole when it arrives: its schema,
    one of each per point, finite vectors. Raises UnwritablePoints with the first problem."""
    batch = message.get("batch") if isinstance(message, dict) else None
    if not isinstance(batch, dict):
        raise UnwritablePoints("holds no point batch")
    try:
        points = PointBatch.model_validate(batch)
    except ValidationError as exc:
        raise UnwritablePoints(_first_problem(exc), _named_rows(batch)) from exc
    if not np.isfinite(points.matrix()).all():
        named = NamedRows(job_id=points.job_id, rows=points.rows)
        raise UnwritablePoints("vectors hold NaN or infinite values", named)
    return points


def _named_rows(batch: dict) -> NamedRows | None:
    try:
        return NamedRows.model_validate(batch)
    except ValidationError:
        return None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    problem = error["msg"].removeprefix("Value error, ")
    return f"{where}: {problem}" if where else problem
