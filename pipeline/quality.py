"""Retrieval quality of a collection, comparable between versions of an index, and the
parity of a faster embedding path with the exact one.

Leave-one-out k-NN agreement: for a fixed sample of points, the share of each one's k nearest
other points that carry the same label (the collection's label field, recorded in its schema).
Point ids derive from the source, so two versions built from the same dataset are measured on
the same sample.
"""

from __future__ import annotations

from statistics import fmean

import numpy as np

from pipeline.store import Reader, SearchRequest


def label_field(metadata: dict) -> str | None:
    """A collection's label field, from the schema its metadata records (None: none, or a
    collection from before schemas were recorded)."""
    return (metadata.get("schema") or {}).get("label_field")


def knn_agreement(
    store: Reader,
    collection: str,
    field: str | None,
    ids: list[str] | None = None,
    sample: int = 200,
    k: int = 10,
) -> tuple[float | None, list[str]]:
    """(agreement, the sample's ids). The sample: `ids` where given (to measure another
    version on the same points), else the first `sample` labelled points. None: no sample,
    or no label `field` (quality is not computed)."""
    if field is None:
        return None, ids or []
    if ids is None:
        labelled = {"must_not": [{"is_empty": {"key": field}}]}
        ids = [p["id"] for p in store.scroll(collection, labelled, limit=sample)["points"]]
    found = store.retrieve(collection, ids, with_vectors=True) if ids else []
    vectors = [v for v in found if field in v["payload"]]
    if not vectors:
        return None, ids
    queries = [
        SearchRequest(vector=v["vector"], limit=k + 1, with_payload={"include": [field]})
        for v in vectors
    ]
    results = store.search_batch(collection, queries)
    shares = []
    for point, hits in zip(vectors, results, strict=True):
        others = [h for h in hits if h["id"] != point["id"]][:k]
        label = point["payload"][field]
        shares.append(fmean(h["payload"].get(field) == label for h in others) if others else 0.0)
    return round(fmean(shares), 4), ids


def embedding_parity(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict:
    """How closely `candidate` vectors (a faster path) follow `reference` ones for the same
    images: the mean cosine between the two vectors of each image, and the mean share of each
    image's k nearest other images that both agree on."""
    ref, cand = _unit(reference), _unit(candidate)
    cosine = float(np.mean(np.sum(ref * cand, axis=1)))
    k = min(k, len(ref) - 1)
    overlaps = [
        len(set(a) & set(b)) / k
        for a, b in zip(_neighbours(ref, k), _neighbours(cand, k), strict=True)
    ]
    return {"mean_cosine": round(cosine, 5), f"top{k}_overlap": round(fmean(overlaps), 4)}


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)  # an image is not its own neighbour
    return np.argsort(-similarity, axis=1)[:, :k]
