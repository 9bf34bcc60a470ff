"""An audit's shard, run on a worker: each point's neighbours found by the store itself.

Per point, three questions, asked from the stored point (`Reader.neighbours`: no vector
leaves the store): which points share a fingerprint with it (`fp_sha256`, `fp_pixels`, or
any `fp_bands` band: a payload filter, so the engine's keyword indexes find them, whatever
the vectors say); which are its `k` nearest vectors; and, where the collection has splits,
which is its nearest in another split (the filter `split != own` makes the answer a leak's
candidate even when its own split holds closer images). The first two go in one call for
the whole shard; the third is answered by the `LOOKAHEAD` nearest when one of them is in
another split, and asked in a second call of the other points only. Nothing is decided here but the
hash tiers: the embedding's threshold comes from the whole collection's distribution
(pipeline.audit).

The questions filter on indexed fields only (pipeline.fingerprint.INDEXES): without the
split's index, the engine reads every point's payload to answer the third.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from pipeline.fingerprint import FINE_DISTANCE, hamming
from pipeline.store import Hit, NeighbourRequest, Reader

if TYPE_CHECKING:
    from redis import Redis

TIERS = ("bytes", "pixels", "phash", "embedding")  # strongest evidence first
SPLIT_FIELD = "source.split"
KEY_FIELD = "source.key"
CANDIDATES = 64  # fingerprint matches asked per point: more are one cluster anyway
# Nearest asked per point where the collection has splits: the first k are its neighbours, and
# the first of them in another split is its nearest there. The engine's beam is wider anyway,
# so 20 cost about what 6 do, and a point of a 90 % split lacks another split's point among
# them 12 % of the time (59 % among 5): the filtered search that then answers (about 70 % of
# the engine's time at 100,000 points when asked of every point) is asked that much less.
LOOKAHEAD = 20
# HNSW's beam for the neighbour questions: Qdrant's default, half the beam of a user's search
# (SEARCH_HNSW_EF). At 1,000,000 points the 20 nearest of a stored point cost about half as
# much, and 93.9 % of the 5 nearest are found against 98.5 % (random vectors, HNSW's hardest
# case; BENCHMARKS.md): a near duplicate lies far nearer than the rest, found either way.
AUDIT_HNSW_EF = 100
SHARDS_TTL_S = 7 * 24 * 3600  # a shard's result waits this long for its audit's merge
SCAN_PAGE = 16  # shard results read by the merge per round trip
FACT_FIELDS = ["source", "fp_sha256", "fp_pixels", "fp_phash", "fp_phash256", "fp_volume"]


class AuditPlan(BaseModel):
    """What every shard of one audit asks (fixed when the audit starts)."""

    model_config = ConfigDict(frozen=True)

    collection: str
    k: int = 5
    phash_distance: int = 3
    fine_distance: int = FINE_DISTANCE  # of the 256-bit hash, confirming a 64-bit match
    patient_field: str | None = None
    label_field: str | None = None
    group_field: str | None = None  # images of one lesion or case: near by nature
    splits: int = 1
    hnsw_ef: int = AUDIT_HNSW_EF


class Facts(BaseModel):
    """What the report needs of one point."""

    id: str
    key: str
    split: str
    patient: str | None = None
    label: list[str] | None = None
    multi_label: bool = False  # a list of findings: conflicts are their Hamming distance
    group: str | None = None
    volume: str | None = None
    nn: list[float] = []  # its k nearest neighbours' cosine similarities, best first
    fingerprinted: bool = True


class Edge(BaseModel):
    """Evidence that two points are one image: the strongest tier found, and its score."""

    a: str
    b: str
    tier: str
    similarity: float
    cosine: float


class ShardResult(BaseModel):
    facts: list[Facts]
    edges: list[Edge]


def audit_shard(reader: Reader, plan: AuditPlan, ids: list[str]) -> ShardResult:
    points = reader.retrieve(plan.collection, ids)  # payloads: the vectors stay in the store
    if not points:
        return ShardResult(facts=[], edges=[])  # deleted since the audit listed them
    asked = [_questions(plan, point) for point in points]
    answers = iter(reader.neighbours(plan.collection, [r for q in asked for r in q]))
    found = [[next(answers) for _ in questions] for questions in asked]
    ranked = [answered[-1] for answered in found]
    fars = _far(reader, plan, points, ranked) if plan.splits > 1 else [[] for _ in points]
    facts, edges = [], []
    for point, answered, far in zip(points, found, fars, strict=True):
        fp = answered[0] if len(answered) > 1 else []
        near = answered[-1][: plan.k]
        facts.append(_facts(plan, point, [h["score"] for h in near]))
        edges += [e for hit in fp if (e := _hash_edge(plan, point, hit))]
        edges += [_vector_edge(point, hit) for hit in [*near, *far]]
    return ShardResult(facts=facts, edges=edges)


def _questions(plan: AuditPlan, point: Hit) -> list[NeighbourRequest]:
    """The fingerprints' candidates (if it has fingerprints), then its nearest: with their
    split, which answers for most points which is their nearest in another split."""
    payload, itself = point["payload"], point["id"]
    asked = []
    if "fp_phash" in payload:
        same = [
            {"key": field, "match": {"value": payload[field]}}
            for field in ("fp_sha256", "fp_pixels")
            if payload.get(field)
        ]
        same.append({"key": "fp_bands", "match": {"any": payload["fp_bands"]}})
        asked.append(
            NeighbourRequest(
                id=itself, filter={"should": same}, limit=CANDIDATES, with_payload=FACT_FIELDS
            )
        )
    limit = max(plan.k, LOOKAHEAD) if plan.splits > 1 else plan.k
    asked.append(
        NeighbourRequest(id=itself, limit=limit, with_payload=[SPLIT_FIELD], hnsw_ef=plan.hnsw_ef)
    )
    return asked


def _far(
    reader: Reader, plan: AuditPlan, points: list[Hit], ranked: list[list[Hit]]
) -> list[list[Hit]]:
    """Each point's nearest in another split: the first of its `LOOKAHEAD` nearest that is in
    another split, or else asked of the store (a filtered search)."""
    fars: list[list[Hit] | None] = []
    for point, nearest in zip(points, ranked, strict=True):
        own = _split(point["payload"])
        fars.append(next(([h] for h in nearest if _split(h["payload"]) != own), None))
    asked = [_apart(plan, point) for point, far in zip(points, fars, strict=True) if far is None]
    answers = iter(reader.neighbours(plan.collection, asked) if asked else [])
    return [far if far is not None else next(answers) for far in fars]


def _apart(plan: AuditPlan, point: Hit) -> NeighbourRequest:
    other = {"key": SPLIT_FIELD, "match": {"except": [_split(point["payload"])]}}
    return NeighbourRequest(
        id=point["id"], filter={"must": [other]}, limit=1, with_payload=False,
        hnsw_ef=plan.hnsw_ef,
    )  # fmt: skip


def _hash_edge(plan: AuditPlan, point: Hit, hit: Hit) -> Edge | None:
    mine, theirs = point["payload"], hit["payload"]
    cosine = float(hit["score"])
    for tier, field in (("bytes", "fp_sha256"), ("pixels", "fp_pixels")):
        if mine.get(field) and mine.get(field) == theirs.get(field):
            return Edge(a=point["id"], b=hit["id"], tier=tier, similarity=1.0, cosine=cosine)
    if hamming(mine["fp_phash"], theirs["fp_phash"]) > plan.phash_distance:
        return None  # a band shared by chance
    fine = hamming(mine["fp_phash256"], theirs["fp_phash256"])
    if fine > plan.fine_distance:
        return None  # the same layout, another picture
    similarity = 1 - fine / 256
    return Edge(a=point["id"], b=hit["id"], tier="phash", similarity=similarity, cosine=cosine)


def _vector_edge(point: Hit, hit: Hit) -> Edge:
    score = float(hit["score"])
    return Edge(a=point["id"], b=hit["id"], tier="embedding", similarity=score, cosine=score)


def _facts(plan: AuditPlan, point: Hit, nn: list[float]) -> Facts:
    payload = point["payload"]
    label = payload.get(plan.label_field) if plan.label_field else None
    return Facts(
        id=point["id"],
        key=str(payload.get("source", {}).get("key", point["id"])),
        split=_split(payload),
        patient=_text(payload.get(plan.patient_field)) if plan.patient_field else None,
        label=_labels(label),
        multi_label=isinstance(label, list) or "|" in str(label or ""),
        group=_text(payload.get(plan.group_field)) if plan.group_field else None,
        volume=payload.get("fp_volume"),
        nn=nn,
        fingerprinted="fp_phash" in payload,
    )


def _split(payload: dict) -> str:
    return str(payload.get("source", {}).get("split", "train"))


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _labels(value: object) -> list[str] | None:
    """A label as a set: one class, or a multi-label finding's labels ("A|B" or a list)."""
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return sorted(str(v) for v in value)
    return sorted(str(value).split("|"))


def _shards_key(job_id: str) -> str:
    return f"medindex:audit:{job_id}:shards"


def keep_shard(redis: Redis, job_id: str, shard: int, result: ShardResult) -> None:
    """A shard's result, kept until the producer merges it (a redelivered shard overwrites).
    Compressed: its JSON is about 1.3 KB a point, mostly point ids and repeated field names,
    a third of that deflated (base64, as the broker's client decodes every reply as text)."""
    packed = base64.b64encode(zlib.compress(result.model_dump_json().encode(), 1)).decode()
    redis.hset(_shards_key(job_id), str(shard), packed)
    redis.expire(_shards_key(job_id), SHARDS_TTL_S)


def shard_results(redis: Redis, job_id: str) -> Iterator[ShardResult]:
    """The shards' results one at a time (HSCAN, `SCAN_PAGE` of them a round trip): the merge
    never holds every shard's text at once."""
    seen = set()
    for shard, raw in redis.hscan_iter(_shards_key(job_id), count=SCAN_PAGE):
        if shard not in seen:  # HSCAN may return a field twice
            seen.add(shard)
            yield ShardResult.model_validate_json(_unpacked(raw))


def _unpacked(raw: str) -> str:
    """A kept result's JSON; kept plain before results were compressed (kept a week for
    `audit --incremental`), compressed since: base64 never starts with a brace."""
    return raw if raw.startswith("{") else zlib.decompress(base64.b64decode(raw)).decode()
