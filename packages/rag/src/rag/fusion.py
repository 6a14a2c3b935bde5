"""Combine rankings from several retrievers into one.

Reciprocal rank fusion (Cormack, Clarke and Buettcher 2009, "Reciprocal Rank Fusion outperforms Condorcet and
individual Rank Learning Methods"): score(d) = sum over rankings r of w_r / (k + rank_r(d)), rank from 1, k = 60.
It needs no score calibration between BM25 and cosine similarity, which is why hybrid search in Elasticsearch,
OpenSearch and Vespa defaults to it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], *, k: float = 60.0,
                           weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
    """Items of every ranking (each best first), fused and sorted best first; ties keep first-seen order."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[Hashable, float] = {}
    for r, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[r])
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
