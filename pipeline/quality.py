"""Retrieval quality of a collection, comparable between versions of an index.

Leave-one-out k-NN agreement: for a fixed sample of points, the share of each one's k nearest
other points that carry the same label (e.g. `dx`). Point ids derive from the source, so two
versions built from the same dataset are measured on the same sample.
"""

from __future__ import annotations

from statistics import fmean

from pipeline.store import Store


def knn_agreement(
    store: Store,
    collection: str,
    ids: list[str] | None = None,
    field: str = "dx",
    sample: int = 200,
    k: int = 10,
) -> tuple[float | None, list[str]]:
    """(agreement, the sample's ids). The sample: `ids` where given (to measure another
    version on the same points), else the first `sample` labelled points. None: no sample."""
    if ids is None:
        labelled = {"must_not": [{"is_empty": {"key": field}}]}
        ids = [p["id"] for p in store.scroll(collection, labelled, limit=sample)["points"]]
    found = store.retrieve(collection, ids, with_vectors=True) if ids else []
    vectors = [v for v in found if field in v["payload"]]
    if not vectors:
        return None, ids
    queries = [
        {"vector": v["vector"], "limit": k + 1, "with_payload": {"include": [field]}}
        for v in vectors
    ]
    results = store.search_batch(collection, queries)
    shares = []
    for point, hits in zip(vectors, results, strict=True):
        others = [h for h in hits if h["id"] != point["id"]][:k]
        label = point["payload"][field]
        shares.append(fmean(h["payload"].get(field) == label for h in others) if others else 0.0)
    return round(fmean(shares), 4), ids
