"""The audit's merge keeps only the edges its findings can use (`pipeline.audit.needed`): the
findings are the same as from every edge, whether the embedding threshold is derived or
given. The shards' results it reads come back from Redis as they were kept."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import audit
from pipeline.neighbours import Edge, Facts, ShardResult, keep_shard, shard_results
from pipeline.progress import connect_redis

N = 400


def _shards() -> tuple[list[Facts], list[Edge]]:
    """Points with 5 neighbours each (the nearest in a narrow band: the fence sits just above
    it), a few planted copies, groups of 3 images (one lesion) whose similarities spread from
    below the fence to above it (they raise the threshold), two splits, a patient per 4."""
    rng = np.random.default_rng(5)
    ids = [f"p{i}" for i in range(N)]
    facts, edges = [], []
    for i in range(N):
        nn = [rng.uniform(0.80, 0.82), *sorted(rng.uniform(0.70, 0.80, size=4), reverse=True)]
        near = rng.choice([j for j in range(N) if j != i], size=5, replace=False)
        edges += [
            Edge(a=ids[i], b=ids[j], tier="embedding", similarity=s, cosine=s)
            for j, s in zip(near, nn, strict=True)
        ]
        if i % 3:
            s = rng.uniform(0.6, 0.97)
            edges.append(Edge(a=ids[i], b=ids[i - 1], tier="embedding", similarity=s, cosine=s))
        if i % 40 == 0:
            edges.append(
                Edge(a=ids[i], b=ids[i + 7], tier="embedding", similarity=0.999, cosine=0.999)
            )
        if i % 50 == 7:
            edges.append(Edge(a=ids[i], b=ids[i + 1], tier="phash", similarity=0.97, cosine=0.6))
        facts.append(
            Facts(id=ids[i], key=f"img-{i}", split="test" if i % 10 == 0 else "train",
                  patient=f"pat{i // 4}", label=[f"dx{i % 3}"], group=f"lesion{i // 3}", nn=nn)
        )  # fmt: skip
    return facts, edges


@pytest.mark.parametrize("given", [None, 0.8])
def test_the_kept_edges_give_the_same_findings(given: float | None) -> None:
    facts, edges = _shards()
    floor = audit.thresholds(facts, [], given).embedding
    group = {f.id: f.group for f in facts}
    kept = [e for e in edges if audit.needed(e, floor, group)]
    assert len(kept) < len(edges) / 2
    every = audit.thresholds(facts, edges, given)
    assert audit.thresholds(facts, kept, given) == every
    assert "raised above" in every.sources["embedding"] or given  # the groups' edges counted
    whole, merged = audit.find(facts, edges, every), audit.find(facts, kept, every)
    assert merged.counts == whole.counts and merged.counts["pairs"] > 0
    assert [(p.a.id, p.b.id, p.tier) for p in merged.pairs] == [
        (p.a.id, p.b.id, p.tier) for p in whole.pairs
    ]
    assert merged.clusters == whole.clusters and merged.keep == whole.keep


def test_shard_results_come_back_as_kept_and_smaller_than_their_json(bare_redis: str) -> None:
    facts, edges = _shards()
    shards = [
        ShardResult(
            facts=facts[i : i + 64],
            edges=[e for e in edges if e.a in {f.id for f in facts[i : i + 64]}],
        )
        for i in range(0, N, 64)
    ]
    redis = connect_redis(bare_redis)
    for n, shard in enumerate(shards):
        keep_shard(redis, "job", n, shard)
    older = ShardResult(facts=facts[:1], edges=[])  # kept as plain JSON by an earlier version
    redis.hset("medindex:audit:job:shards", "-1", older.model_dump_json())
    back = [r.model_dump_json() for r in shard_results(redis, "job")]
    assert sorted(back) == sorted(r.model_dump_json() for r in [*shards, older])
    kept = sum(len(v) for v in redis.hvals("medindex:audit:job:shards"))
    assert kept < sum(len(s.model_dump_json()) for s in [*shards, older]) / 2
