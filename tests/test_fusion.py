"""Fusion and MMR: pure functions, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from ragapp.indexes.fusion import maximal_marginal_relevance, reciprocal_rank_fusion, weighted_score_fusion


def test_rrf_matches_hand_computed_scores() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    bm25 = [(3, 12.0), (4, 9.0)]
    fused = dict(reciprocal_rank_fusion([dense, bm25], k=60))
    assert fused[1] == pytest.approx(1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)  # found by both lists: first overall
    assert fused[4] == pytest.approx(1 / 62)
    assert [i for i, _ in reciprocal_rank_fusion([dense, bm25], k=60)] == [3, 1, 2, 4]  # tie 2/4: smaller id first


def test_rrf_ignores_raw_scores_and_honours_weights() -> None:
    a = [(1, 1000.0), (2, 0.001)]
    b = [(2, 5.0), (1, 4.0)]
    assert dict(reciprocal_rank_fusion([a, b], k=0))[1] == pytest.approx(1 + 1 / 2)
    weighted = reciprocal_rank_fusion([a, b], k=10, weights=[0.2, 0.8])
    assert weighted[0][0] == 2  # the heavier list's first item wins
    assert weighted[0][1] == pytest.approx(0.2 / 12 + 0.8 / 11)
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([a, b], weights=[1.0])
    assert reciprocal_rank_fusion([]) == []


def test_weighted_fusion_normalises_each_list() -> None:
    dense = [(1, 0.9), (2, 0.5), (3, 0.1)]  # normalised 1, 0.5, 0
    bm25 = [(3, 30.0), (4, 10.0)]  # normalised 1, 0
    fused = dict(weighted_score_fusion([dense, bm25], weights=[0.5, 0.5]))
    assert fused == pytest.approx({1: 0.5, 2: 0.25, 3: 0.5, 4: 0.0})
    assert [i for i, _ in weighted_score_fusion([dense, bm25], weights=[0.5, 0.5])] == [1, 3, 2, 4]
    assert dict(weighted_score_fusion([[(7, 2.0), (8, 2.0)]])) == {7: 1.0, 8: 1.0}  # equal scores: all 1
    assert weighted_score_fusion([[], [(5, 1.0)]]) == [(5, 1.0)]


def test_mmr_trades_relevance_for_diversity() -> None:
    def unit(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=np.float32)
        return a / np.linalg.norm(a)

    query = unit([1, 1, 0])
    vectors = np.stack([unit([1, 0.9, 0]), unit([1, 0.95, 0.02]), unit([0.2, 1, 0.6])])
    # Pure relevance: the two near-duplicates first.
    assert maximal_marginal_relevance(query, vectors, 3, lambda_=1.0) == [1, 0, 2]
    # With diversity the duplicate of the first pick drops behind the different passage.
    assert maximal_marginal_relevance(query, vectors, 3, lambda_=0.5) == [1, 2, 0]
    assert maximal_marginal_relevance(query, vectors, 1, lambda_=0.5) == [1]
    assert maximal_marginal_relevance(query, vectors[:0], 3) == []
    with pytest.raises(ValueError):
        maximal_marginal_relevance(query, vectors, 2, lambda_=1.5)
