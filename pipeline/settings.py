"""The one settings class. No other module reads the environment."""

from __future__ import annotations

import hmac
import math
import os
from functools import cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import MedindexError
from pipeline.schemas import (
    CropMargin,
    DicomUnit,
    DicomWindow,
    NiftiVariant,
    ReadOptions,
    UnmaskedSlices,
)

DEFAULT_MODEL = "facebook/dino-vits16"
# "exact": the model's own image processor (the seed's path). "fast": JPEGs decoded at reduced
# size (PIL draft, at least the model's input size), then the same resize and normalisation in
# one batch; parity with "exact" is measured by `medindex bench`.
Preprocessing = Literal["exact", "fast"]
PREPROCESSINGS: tuple[str, ...] = get_args(Preprocessing)
# Autocast of the forward pass; vectors leave it as float32 whatever runs inside. "auto": bf16 on
# CUDA, float32 on CPU (the seed's vectors). Parity of half precision printed by `medindex bench`.
Precision = Literal["auto", "float32", "bf16", "fp16"]
# Vectors as kept by a Qdrant server or the embedded store: float32, or int8 scalar
# quantization (4x smaller, kept in RAM) with searches rescored on the float32 originals.
Quantization = Literal["none", "int8"]


class Settings(BaseSettings):
    """Every knob of medindex, read from `MEDINDEX_*` variables or a `.env` file."""

    model_config = SettingsConfigDict(
        env_prefix="MEDINDEX_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Broker. Unset: `medindex up` runs a local Redis on `local_redis_port`.
    redis_url: str | None = None
    local_redis_port: int = 6390

    # Store. With `qdrant_url` set, a Qdrant server (backend "server", through qdrant-client);
    # otherwise Qdrant Edge, the real engine in-process, in `home` (backend "edge").
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout_s: float = Field(30.0, gt=0)
    collection: str = "medical_images"
    # Production layout of a server collection (pipeline.layout), applied when it is created
    # and recorded in its metadata. Prefer gRPC for writes: a 1,000-point write of 384-d floats
    # is 7.8 MiB as JSON, above Qdrant's 5 MB advice, and 1.6 MiB as protobuf (docs/capacity.md).
    qdrant_shard_number: int = Field(1, ge=1, le=64)
    qdrant_replication_factor: int = Field(1, ge=1, le=9)
    qdrant_write_consistency: int = Field(1, ge=1, le=9)
    # These two lay out embedded (Edge) collections too, recorded in each one's metadata.
    qdrant_on_disk: bool = False
    qdrant_quantization: Quantization = "none"
    qdrant_prefer_grpc: bool = False
    qdrant_grpc_port: int = Field(6334, ge=1, le=65535)

    # Where local state lives: the embedded store, the local Redis' data, models made offline.
    home: Path = Path(".medindex")

    # Embedding.
    model: str = DEFAULT_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "fast": JPEGs decoded at reduced size, one batched resize + normalise (parity with the
    # exact path measured by `medindex bench`, BENCHMARKS.md). "exact": the model's own image
    # processor, the seed's path. Recorded with each collection; its queries follow it.
    preprocessing: Preprocessing = "fast"
    precision: Precision = "auto"
    # Images per forward pass: several queued jobs are fused into one pass, then split back
    # into each job's points (jobs stay `job_size` on the queue). Unset: 256 on CUDA; on CPU
    # one job per pass (fusing measured no faster there, and whole jobs keep CPU processes
    # evenly loaded).
    embed_batch_size: int | None = Field(None, ge=1, le=4096)
    # Threads per embed process that read and decode the next jobs while the model runs on
    # the current pass (PIL releases the GIL while it decodes). Unset: on CUDA the host's
    # cores shared by the embed processes; on CPU 2 (the model takes the cores there).
    embed_decode_workers: int | None = Field(None, ge=1, le=256)
    # CUDA kernels: TF32 matmuls, the attention implementation, torch.compile, channels-last
    # (helps convolutional models, e.g. ResNet, in half precision).
    cuda_tf32: bool = True
    attention: Literal["sdpa", "eager"] = "sdpa"
    torch_compile: bool = False
    channels_last: bool = False
    # JPEGs decoded on the GPU (torchvision.io.decode_jpeg, the `gpu-decode` extra); other
    # images, and every image on CPU, are decoded by PIL.
    gpu_decode: bool = False

    # Pipeline shape.
    job_size: int = Field(16, ge=1, le=256)
    # Messages out at once (jobs queued or being embedded, point messages queued or buffered,
    # of every ingest): a producer sends its next jobs as these finish, so that Redis holds
    # about the same whatever the datasets' sizes (about 1,100 B per queued job).
    max_queued_jobs: int = Field(256, ge=1, le=1_000_000)
    upsert_batch_size: int = Field(1000, ge=1, le=10_000)
    flush_interval_s: float = Field(2.0, gt=0)
    embed_concurrency: int = Field(1, ge=1)
    # Tries again of a job that met an unexpected, maybe passing error (CUDA out of memory, a
    # file system hiccup; for an audit's shard, a store outage) before its rows are recorded as
    # failed with the reason.
    embed_max_retries: int = Field(3, ge=0, le=10)
    # Deliveries of one job whose worker died on it (OOM-killed, crashed) before its rows are
    # recorded as failed with the reason: a poisonous job must not come back forever.
    embed_max_lost: int = Field(3, ge=1, le=20)
    # Times a point message whose write call failed (the call raised, or its process died) is
    # sent again before its points are parked with the reason: it must not come back forever.
    upsert_max_retries: int = Field(3, ge=0, le=10)
    # Seconds before Redis hands an unacknowledged job to another worker.
    visibility_timeout_s: int = Field(600, ge=30)
    # Seconds a job may make no progress, with no message of it queued, delivered or buffered,
    # before its producer sends its pending rows again: a message can vanish where no
    # acknowledgement covers it (a consumer killed between taking it and recording it).
    resend_quiet_s: float = Field(45.0, gt=0)
    # Seconds a killed reindex keeps its alias locked (a running one renews its lock); a second
    # reindex of a running alias waits this long before it is refused.
    reindex_lock_s: int = Field(60, ge=5, le=3600)
    # Seconds the store worker retries a failing write (tries included) before it parks the
    # points: kept in Redis, shown as failed with the reason, written by `medindex retry`.
    store_retry_budget_s: float = Field(240.0, ge=0)
    # Points of an embedded collection outside its HNSW index (written since its last build)
    # at which the store worker builds it again in the background; an ingest's end does too.
    index_after_points: int = Field(20_000, ge=1)
    # Seconds an embedded collection's writes may go unflushed to disk: a write is acknowledged
    # once Edge's write-ahead log holds it (a killed store worker loses nothing); a power cut
    # may lose this last interval, as with a Qdrant server. 0 flushes every write.
    store_flush_s: float = Field(1.0, ge=0)

    # Reading NIfTI and DICOM (defaults of `medindex ingest`'s flags; a job records its own).
    nifti_variant: NiftiVariant = "slice"
    nifti_crop_margin: CropMargin = 8
    nifti_unmasked_slices: UnmaskedSlices = 1
    dicom_unit: DicomUnit = "instance"
    dicom_window: DicomWindow = "file"
    # DICOM de-identification: on unless turned off. Patient, study and series identities are
    # kept as HMAC-SHA256 hashes keyed with `deid_key`, the same on every worker (required to
    # ingest DICOM while de-identifying).
    deidentify: bool = True
    deid_key: SecretStr | None = None

    # Guards on what an image may cost to decode.
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_image_bytes: int = Field(32 * 1024 * 1024, ge=1)
    # Query images (uploads to the HTTP API) are anyone's: a much lower pixel limit, and at
    # most this many decoded at once in one search process (a 16-bit 7000x7000 PNG of 95 KB
    # would otherwise take about 730 MB).
    query_max_image_pixels: int = Field(16_000_000, ge=1)
    query_decode_concurrency: int = Field(2, ge=1, le=64)
    # NIfTI volumes, ingested or uploaded: at most this many voxels in the volume read (a 4-D
    # file's first), and this many bytes inflated to reach its end (a 510 KiB gzip can declare
    # 512 MiB of voxels). A 512x512x1024 CT fits, in 16 bits (512 MiB) and in float32 (1 GiB).
    max_volume_voxels: int = Field(256 * 1024 * 1024, ge=1)
    max_volume_bytes: int = Field(1024 * 1024 * 1024, ge=1)

    # Seconds a client waits for the store worker to answer (embedded store only).
    store_call_timeout_s: float = Field(60.0, gt=0)

    log_level: str = "INFO"
    log_json: bool = False  # JSON lines instead of text, for log shippers

    # Flower, started by `medindex up` on 127.0.0.1 (0 turns it off). Basic auth when both set.
    flower_port: int = Field(5555, ge=0, le=65535)
    flower_user: str | None = None
    flower_password: SecretStr | None = None

    # The search page and the JSON API (`medindex serve`): when set, every request but
    # /healthz needs it, as the `X-API-Key` header or the page's login cookie.
    api_key: SecretStr | None = None
    # The page's sign-in: a session lasts `session_ttl_s` from sign-in (kept in Redis; sign-out
    # or a new key ends it). Its cookie is `Secure` (sent over HTTPS only, as behind a TLS
    # ingress) unless the page is asked for on localhost; false: never (plain HTTP elsewhere).
    session_ttl_s: int = Field(8 * 3600, ge=1, le=30 * 24 * 3600)
    session_cookie_secure: bool = True
    # Sign-in attempts per client address and minute: guesses at the key are bounded.
    login_attempts_per_minute: int = Field(10, ge=1, le=1000)
    # Seconds the page's embedding map of a version is served before a version that has grown
    # (or shrunk) since gets a new one: polling the map asks a worker at most this often.
    map_refresh_s: float = Field(300.0, ge=0)

    def deid_fingerprint(self) -> str | None:
        """A short keyed digest of `deid_key` (None: no key): two processes compare keys by it
        without the key leaving either (workers answer it to producers, see tasks/control.py)."""
        key = self.deid_key.get_secret_value() if self.deid_key else ""
        if not key:
            return None
        return hmac.new(key.encode(), b"medindex deid key fingerprint", "sha256").hexdigest()[:12]

    @model_validator(mode="after")
    def _writes_end_before_redelivery(self) -> Settings:
        # Buffering (up to a quarter of the timeout) plus retries must end before Redis hands
        # the same points to another worker.
        if self.store_retry_budget_s > self.visibility_timeout_s / 2:
            raise ValueError(
                f"MEDINDEX_STORE_RETRY_BUDGET_S ({self.store_retry_budget_s:g}) must be at most "
                f"half of MEDINDEX_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s})"
            )
        return self

    @model_validator(mode="after")
    def _consistency_within_replicas(self) -> Settings:
        # A write waits for this many replicas: more than exist would never be acknowledged.
        if self.qdrant_write_consistency > self.qdrant_replication_factor:
            raise ValueError(
                f"MEDINDEX_QDRANT_WRITE_CONSISTENCY ({self.qdrant_write_consistency}) must be at "
                f"most MEDINDEX_QDRANT_REPLICATION_FACTOR ({self.qdrant_replication_factor})"
            )
        return self

    def read_options(self, **given: object) -> ReadOptions:
        """Read options for an ingest or a query: what is `given` (None: not given), the
        settings' defaults for the rest (the read options that are settings too)."""
        fields = type(self).model_fields
        defaults = {
            name: getattr(self, name) for name in ReadOptions.model_fields if name in fields
        }
        return ReadOptions(**(defaults | {k: v for k, v in given.items() if v is not None}))

    @property
    def embed_pass_size(self) -> int:
        """Images per forward pass: the setting, else 256 on CUDA and one job on CPU. Read
        from the setting, never from the hardware, so that the parent of the worker processes
        never initialises CUDA ("auto" sizes as CPU: set MEDINDEX_DEVICE=cuda on GPU hosts)."""
        if self.embed_batch_size:
            return self.embed_batch_size
        return 256 if self.device == "cuda" else self.job_size

    @property
    def embed_decode_threads(self) -> int:
        if self.embed_decode_workers:
            return self.embed_decode_workers
        if self.device != "cuda":
            return 2
        return max(2, (os.cpu_count() or 1) // self.embed_concurrency)

    @property
    def embed_jobs_per_call(self) -> int:
        """Jobs an embed pool process takes in one call: passes enough that the decoding of
        each but the first overlaps the pass before (4 on CUDA); on CPU two, so that the
        processes stay evenly loaded to the end of an ingest."""
        passes = 4 if self.device == "cuda" else 2
        return math.ceil(self.embed_pass_size / self.job_size) * passes

    @property
    def broker_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.local_redis_port}/0"

    @property
    def store_backend(self) -> Literal["edge", "server"]:
        return "server" if self.qdrant_url else "edge"

    @property
    def uses_local_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_store_path(self) -> Path:
        return self.home / "qdrant"

    @property
    def local_redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def flower_basic_auth(self) -> str | None:
        if self.flower_user and self.flower_password:
            return f"{self.flower_user}:{self.flower_password.get_secret_value()}"
        return None


@cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise MedindexError(_one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = "_".join(str(part) for part in error["loc"])
    where = f" MEDINDEX_{field.upper()}" if field else ""
    return f"invalid setting{where}: {error['msg'].removeprefix('Value error, ')}"
