"""Production collection settings: settings -> create-collection arguments -> a record kept with
the collection. qdrant-client's local mode is the only server API here; it keeps the vectors'
`on_disk` and the metadata but ignores shards, replicas, write consistency, payload on disk and
quantization, so those are asserted where they are passed (the arguments), not on a cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from pipeline.errors import MedindexError
from pipeline.schemas import point_id
from pipeline.settings import Settings, get_settings
from pipeline.store import SearchRequest
from pipeline.store.edge_build import search_params as edge_search_params
from pipeline.store.layout import CollectionLayout, collection_layout
from pipeline.store.server import ServerStore
from pipeline.store.spec import SEARCH_HNSW_EF

PRODUCTION = {
    "MEDINDEX_QDRANT_SHARD_NUMBER": "6",
    "MEDINDEX_QDRANT_REPLICATION_FACTOR": "2",
    "MEDINDEX_QDRANT_WRITE_CONSISTENCY": "2",
    "MEDINDEX_QDRANT_ON_DISK": "true",
    "MEDINDEX_QDRANT_QUANTIZATION": "int8",
}
SPEC = {"dim": 384, "distance": "cosine", "schema": {}}


def production(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_settings_become_create_collection_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    args = collection_layout(production(monkeypatch)).create_args(384)
    assert args["vectors_config"] == models.VectorParams(
        size=384, distance=models.Distance.COSINE, on_disk=True
    )
    assert (args["shard_number"], args["replication_factor"]) == (6, 2)
    assert args["write_consistency_factor"] == 2 and args["on_disk_payload"] is True
    scalar = args["quantization_config"].scalar
    assert scalar.type == models.ScalarType.INT8 and scalar.always_ram is True
    assert CollectionLayout().create_args(384)["quantization_config"] is None


def test_bounds_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDINDEX_QDRANT_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("MEDINDEX_QDRANT_WRITE_CONSISTENCY", "3")
    get_settings.cache_clear()
    try:
        with pytest.raises(MedindexError, match="WRITE_CONSISTENCY \\(3\\) must be at most"):
            get_settings()
        monkeypatch.setenv("MEDINDEX_QDRANT_WRITE_CONSISTENCY", "1")
        monkeypatch.setenv("MEDINDEX_QDRANT_SHARD_NUMBER", "0")
        with pytest.raises(MedindexError, match="MEDINDEX_QDRANT_SHARD_NUMBER"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_a_created_collection_records_its_layout_and_searches_rescored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    layout = collection_layout(production(monkeypatch))
    store = ServerStore.local(tmp_path / "q", layout)
    plain = ServerStore.local(tmp_path / "plain")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 384)).astype(np.float32)
    ids = [point_id("layout", "train", str(i)) for i in range(50)]
    for each in (store, plain):
        each.ensure_collection("c", SPEC)
        each.upsert("c", ids, vectors, [{"i": i} for i in range(50)])
    recorded = store.metadata("c")["layout"]
    assert recorded == layout.record()
    assert recorded["quantization"] == "int8" and recorded["shard_number"] == 6
    config = store.client.get_collection("c").config
    assert config.params.vectors.on_disk is True  # the one layout field local mode keeps
    assert plain.metadata("c")["layout"]["quantization"] == "none"
    # Searches pass the rescoring parameters and the HNSW beam, on either engine; local mode
    # (exact, float32) ranks as before.
    assert layout.search_params().quantization.rescore is True
    assert (
        layout.search_params().hnsw_ef
        == CollectionLayout().search_params().hnsw_ef
        == SEARCH_HNSW_EF
    )
    assert (
        edge_search_params("int8").hnsw_ef == edge_search_params("none").hnsw_ef == SEARCH_HNSW_EF
    )
    nearest = SearchRequest(vector=vectors[3].tolist(), limit=5)
    assert store.search("c", nearest) == plain.search("c", nearest)
