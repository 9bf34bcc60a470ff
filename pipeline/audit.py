"""An audit's findings, merged from its shards (pipeline.neighbours): thresholds, pairs,
duplicate clusters, leaks across splits and patients, label conflicts, outliers, and a
patient-level split without leaks.

Thresholds say where they come from. The hash tiers' are exact (bytes, pixels) or a Hamming
distance (pHash, at most 3: beyond it the bands no longer find every candidate). The
embedding's comes from the collection's own nearest-neighbour similarities: an upper fence
(Q3 + 3 IQR) above which a neighbour is closer than the collection's images ever are to each
other; where metadata names images that belong together (`group_field`: one lesion, one case),
the threshold stays above what those reach (their 95th percentile), so a patient's follow-up
is no duplicate. Outliers lie below the lower fence (Q1 - 3 IQR). Any of them can be given.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.fingerprint import FINE_DISTANCE
from pipeline.neighbours import TIERS, Edge, Facts

FENCE = 3.0  # IQRs beyond the quartiles
MAX_THRESHOLD = 0.9999


@dataclass(frozen=True)
class Thresholds:
    embedding: float
    phash_distance: int
    outlier: float
    sources: dict[str, str]  # tier -> where its threshold comes from


@dataclass(frozen=True)
class Pair:
    a: Facts
    b: Facts
    tier: str
    similarity: float
    cosine: float
    cluster: int | None = None

    @property
    def cross_split(self) -> bool:
        return self.a.split != self.b.split

    @property
    def cross_patient(self) -> bool:
        return None not in (self.a.patient, self.b.patient) and self.a.patient != self.b.patient

    @property
    def label_distance(self) -> int:
        """1 for two classes, a multi-label finding's Hamming distance; 0 when unknown."""
        if self.a.label is None or self.b.label is None:
            return 0
        if not (self.a.multi_label or self.b.multi_label):
            return int(self.a.label != self.b.label)
        return len(set(self.a.label) ^ set(self.b.label))

    @property
    def same_volume(self) -> bool:
        return self.a.volume is not None and self.a.volume == self.b.volume

    @property
    def adjacent(self) -> bool:
        """Two slices of one volume that are alike, not the same (an instance stored twice is
        a duplicate): alike by nature, reported apart from duplicates."""
        return self.same_volume and self.tier not in ("bytes", "pixels")


@dataclass(frozen=True)
class Cluster:
    id: int
    members: list[Facts]
    tiers: list[str]
    min_edge_similarity: float  # the weakest link's score in its tier
    min_cosine: float  # over every pair of members (`pairwise`): chaining shows as a low value


@dataclass
class Findings:
    points: list[Facts]
    thresholds: Thresholds
    pairs: list[Pair]
    clusters: list[Cluster]
    outliers: list[tuple[Facts, float]]
    patient_leaks: dict[str, list[str]]  # patient -> its splits
    keep: list[tuple[Facts, bool, str, str]]  # point, kept, proposed split, why
    counts: dict = field(default_factory=dict)


def thresholds(
    points: list[Facts],
    edges: list[Edge],
    embedding: float | None = None,
    phash_distance: int = 3,
    outlier: float | None = None,
    fine_distance: int = FINE_DISTANCE,
) -> Thresholds:
    nn = np.array([p.nn[0] for p in points if p.nn], dtype=np.float64)
    sources = {"bytes": "identical sha256", "pixels": "identical decoded values"}
    sources["phash"] = (
        f"Hamming distance <= {phash_distance} of 64 bits, confirmed <= {fine_distance} of 256"
    )
    q1, q3 = np.percentile(nn, [25, 75]) if nn.size else (0.0, 1.0)
    iqr = q3 - q1
    if embedding is None:
        embedding = min(float(q3 + FENCE * iqr), MAX_THRESHOLD)
        sources["embedding"] = (
            f"nearest-neighbour cosine of {nn.size} points: Q3 {q3:.4f} + {FENCE:g} IQR"
        )
        positives = _group_similarities(points, edges)
        if positives.size >= 5:
            above = float(np.percentile(positives, 95))
            if above > embedding:
                embedding = min(above, MAX_THRESHOLD)
                sources["embedding"] += (
                    f", raised above 95% of {positives.size} same-group neighbours ({above:.4f})"
                )
    else:
        sources["embedding"] = "given"
    if outlier is None:
        outlier = float(q1 - FENCE * iqr)
        sources["outlier"] = f"nearest-neighbour cosine: Q1 {q1:.4f} - {FENCE:g} IQR"
    else:
        sources["outlier"] = "given"
    return Thresholds(round(embedding, 6), phash_distance, round(outlier, 6), sources)


def needed(edge: Edge, floor: float, group: dict[str, str | None]) -> bool:
    """Whether the findings can use `edge`, given `floor`: the embedding threshold that the
    points' facts alone set (`thresholds(points, [])`; the final one is never lower). A hash
    tier's edge, one at or above it, or one between images of one group (their similarities
    may raise it): the merge keeps these and none of the others, most of them."""
    if edge.tier != "embedding" or edge.similarity >= floor:
        return True
    return bool(group.get(edge.a)) and group.get(edge.a) == group.get(edge.b)


def _group_similarities(points: list[Facts], edges: list[Edge]) -> np.ndarray:
    """Embedding neighbours that metadata says belong together (one lesion, one case)."""
    group = {p.id: p.group for p in points}
    return np.array(
        [
            e.similarity
            for e in edges
            if e.tier == "embedding" and group.get(e.a) and group.get(e.a) == group.get(e.b)
        ]
    )


def find(points: list[Facts], edges: list[Edge], limits: Thresholds) -> Findings:
    by_id = {p.id: p for p in points}
    pairs = _pairs(by_id, edges, limits)
    pairs, clusters = _clusters(pairs, by_id)
    outliers = [(p, p.nn[0]) for p in points if p.nn and p.nn[0] < limits.outlier]
    leaks = _patient_leaks(points)
    keep = _keep(points, pairs, clusters)
    findings = Findings(points, limits, pairs, clusters, outliers, leaks, keep)
    findings.counts = _counts(findings)
    return findings


def _pairs(by_id: dict[str, Facts], edges: list[Edge], limits: Thresholds) -> list[Pair]:
    """One pair per two points (found from either side), at its strongest tier."""
    best: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        if edge.tier == "embedding" and edge.similarity < limits.embedding:
            continue
        if edge.a not in by_id or edge.b not in by_id:
            continue  # a point deleted while the audit ran
        key = tuple(sorted((edge.a, edge.b)))
        have = best.get(key)
        if have is None or (TIERS.index(edge.tier), -edge.similarity) < (
            TIERS.index(have.tier),
            -have.similarity,
        ):
            best[key] = edge
    pairs = [
        Pair(by_id[a], by_id[b], e.tier, round(e.similarity, 6), round(e.cosine, 6))
        for (a, b), e in best.items()
    ]
    return sorted(pairs, key=lambda p: (TIERS.index(p.tier), -p.similarity, p.a.key, p.b.key))


def _components(ids: list[str], links: list[tuple[str, str]]) -> dict[str, int]:
    """Union-find over the links: point -> its component's number."""
    index = {i: n for n, i in enumerate(ids)}
    rows = [index[a] for a, _ in links]
    cols = [index[b] for _, b in links]
    graph = coo_matrix((np.ones(len(links)), (rows, cols)), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    return {i: int(labels[n]) for i, n in index.items()}


def _clusters(pairs: list[Pair], by_id: dict[str, Facts]) -> tuple[list[Pair], list[Cluster]]:
    duplicates = [p for p in pairs if not p.adjacent]
    ids = sorted({i for p in duplicates for i in (p.a.id, p.b.id)})
    if not ids:
        return pairs, []
    component = _components(ids, [(p.a.id, p.b.id) for p in duplicates])
    members: dict[int, list[str]] = defaultdict(list)
    for i in ids:
        members[component[i]].append(i)
    order = sorted(members.values(), key=lambda m: (-len(m), min(by_id[i].key for i in m)))
    number = {component[m[0]]: n + 1 for n, m in enumerate(order)}
    numbered = [
        Pair(p.a, p.b, p.tier, p.similarity, p.cosine, number[component[p.a.id]])
        if not p.adjacent
        else p
        for p in pairs
    ]
    clusters = []
    for n, ids_of in enumerate(order, start=1):
        inside = [p for p in numbered if p.cluster == n]
        clusters.append(
            Cluster(
                id=n,
                members=sorted((by_id[i] for i in ids_of), key=lambda f: f.key),
                tiers=sorted({p.tier for p in inside}, key=TIERS.index),
                min_edge_similarity=min(p.similarity for p in inside),
                min_cosine=min(p.cosine for p in inside),
            )
        )
    return numbered, clusters


def pairwise(cluster: Cluster, vectors: np.ndarray) -> Cluster:
    """The cluster with its members' lowest cosine similarity over every pair of them
    (`vectors`: theirs, in `members` order), not only over the links that made it."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    lowest = float((unit @ unit.T).min())
    return Cluster(
        cluster.id, cluster.members, cluster.tiers, cluster.min_edge_similarity, round(lowest, 6)
    )


def _patient_leaks(points: list[Facts]) -> dict[str, list[str]]:
    splits: dict[str, set[str]] = defaultdict(set)
    for p in points:
        if p.patient is not None:
            splits[p.patient].add(p.split)
    return {patient: sorted(s) for patient, s in sorted(splits.items()) if len(s) > 1}


def _keep(
    points: list[Facts], pairs: list[Pair], clusters: list[Cluster]
) -> list[tuple[Facts, bool, str, str]]:
    """One image per duplicate cluster; every image's split proposed so that no patient and no
    duplicate spans two: the images linked by a patient or a duplicate go where most of them
    are."""
    dropped = {m.id: c.members[0].key for c in clusters for m in c.members[1:]}
    ids = [p.id for p in points]
    links = [(p.a.id, p.b.id) for p in pairs if p.cluster is not None]
    by_patient: dict[str, str] = {}
    for p in points:
        if p.patient is not None:
            links.append((by_patient.setdefault(p.patient, p.id), p.id))
    component = _components(ids, links)
    votes: dict[int, Counter] = defaultdict(Counter)
    for p in points:
        votes[component[p.id]][p.split] += 1
    split_of = {
        c: sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for c, v in votes.items()
    }
    rows = []
    for p in sorted(points, key=lambda f: (f.split, f.key)):
        proposed = split_of[component[p.id]]
        why = f"duplicate of {dropped[p.id]}" if p.id in dropped else ""
        if proposed != p.split:
            why = "; ".join(filter(None, [why, f"moved from {p.split}: its patient or duplicate"]))
        rows.append((p, p.id not in dropped, proposed, why))
    return rows


def _counts(f: Findings) -> dict:
    duplicates = [p for p in f.pairs if p.cluster is not None]
    return {
        "points": len(f.points),
        "not_fingerprinted": sum(not p.fingerprinted for p in f.points),
        "pairs": len(f.pairs),
        "pairs_by_tier": {t: sum(p.tier == t for p in duplicates) for t in TIERS},
        "duplicate_clusters": len(f.clusters),
        "images_in_clusters": sum(len(c.members) for c in f.clusters),
        "redundant_images": sum(len(c.members) - 1 for c in f.clusters),
        "image_leaks_across_splits": sum(p.cross_split for p in duplicates),
        "patients_across_splits": len(f.patient_leaks),
        "images_across_patients": sum(p.cross_patient for p in duplicates),
        "label_conflicts": sum(p.label_distance > 0 for p in duplicates),
        "adjacent_slices": sum(p.adjacent for p in f.pairs),
        "outliers": len(f.outliers),
        "moved_to_another_split": sum(split != p.split for p, _, split, _ in f.keep),
    }
