"""How a server collection is laid out on a Qdrant cluster: a pure function of the settings.

`collection_layout` turns the production settings (shards, replicas, write consistency,
on-disk storage, int8 quantization) into the arguments qdrant-client's `create_collection`
takes, plus a plain record stored in the collection's metadata, so that a collection says how
it was made long after the settings that made it changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qdrant_client import models

from pipeline.settings import Quantization, Settings
from pipeline.store.spec import INT8_QUANTILE, RESCORE_OVERSAMPLING, SEARCH_HNSW_EF


@dataclass(frozen=True)
class CollectionLayout:
    shard_number: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    on_disk: bool = False  # vectors and payload on disk, the OS page cache in front
    quantization: Quantization = "none"

    def create_args(self, dim: int) -> dict[str, Any]:
        """Keyword arguments for `QdrantClient.create_collection` (besides the name)."""
        int8 = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=True
            )
        )
        return {
            "vectors_config": models.VectorParams(
                size=dim, distance=models.Distance.COSINE, on_disk=self.on_disk
            ),
            "shard_number": self.shard_number,
            "replication_factor": self.replication_factor,
            "write_consistency_factor": self.write_consistency_factor,
            "on_disk_payload": self.on_disk,
            "quantization_config": int8 if self.quantization == "int8" else None,
        }

    def search_params(self, hnsw_ef: int | None = None) -> models.SearchParams:
        """The search's HNSW beam (SEARCH_HNSW_EF unless given); for a quantized collection,
        rescoring on the originals."""
        rescored = models.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
        return models.SearchParams(
            hnsw_ef=hnsw_ef or SEARCH_HNSW_EF,
            quantization=None if self.quantization == "none" else rescored,
        )

    def record(self) -> dict[str, Any]:
        """What the collection's metadata keeps under `layout`."""
        return asdict(self) | {"rescore_oversampling": RESCORE_OVERSAMPLING}


def collection_layout(settings: Settings) -> CollectionLayout:
    return CollectionLayout(
        shard_number=settings.qdrant_shard_number,
        replication_factor=settings.qdrant_replication_factor,
        write_consistency_factor=settings.qdrant_write_consistency,
        on_disk=settings.qdrant_on_disk,
        quantization=settings.qdrant_quantization,
    )
