"""Combining ranked lists from several retrievers, and diversifying the result.

A ranking is a list of (chunk id, score), best first. Scores from different retrievers are not on
one scale (cosine similarity vs. unbounded BM25), so fusion uses either ranks alone (RRF) or scores
min-max normalised within each list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranking = Sequence[tuple[int, float]]


def _ordered(scores: dict[int, float]) -> list[tuple[int, float]]:
    # Ties go to the smaller id so results are reproducible.
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def _weights(rankings: Sequence[Ranking], weights: Sequence[float] | None) -> Sequence[float]:
    if weights is None:
        return [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    return weights


def reciprocal_rank_fusion(
    rankings: Sequence[Ranking], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Cormack et al. (2009): score(d) = Σ w / (k + rank of d), rank from 1; lists that miss d add nothing."""
    if k < 0:
        raise ValueError("k must be >= 0")
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, _weights(rankings, weights), strict=True):
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (k + rank)
    return _ordered(fused)


def weighted_score_fusion(
    rankings: Sequence[Ranking], weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Σ w × min-max normalised score; a list that misses d counts as its minimum (0).

    A list whose scores are all equal normalises to 1 for each of its entries.
    """
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, _weights(rankings, weights), strict=True):
        if not ranking:
            continue
        scores = [score for _, score in ranking]
        low, high = min(scores), max(scores)
        span = high - low
        for chunk_id, score in ranking:
            norm = (score - low) / span if span > 0 else 1.0
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * norm
    return _ordered(fused)


def maximal_marginal_relevance(query: np.ndarray, vectors: np.ndarray, k: int, lambda_: float = 0.5) -> list[int]:
    """Carbonell & Goldstein (1998): pick, one at a time, the candidate maximising
    λ·sim(query, d) − (1−λ)·max sim(d, already picked). Returns row positions into `vectors`.

    Vectors are L2-normalised, so inner products are cosine similarities. λ = 1 is plain relevance order.
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError("lambda_ must be between 0 and 1")
    n = len(vectors)
    if n == 0 or k <= 0:
        return []
    relevance = vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
    similarity = vectors @ vectors.T
    picked: list[int] = []
    redundancy = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = lambda_ * relevance - (1.0 - lambda_) * penalty
        score[~available] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, similarity[best])
    return picked
