"""Comparing runs: pairing by id, point deltas equal to the aggregates, bootstrap intervals that
behave (zero for identical runs, excluding 0 for a clear change, including 0 for noise).

The runs here are synthetic (made-up answers and scores) to test the statistics, not a model.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from ragapp.evals.comparison import compare
from ragapp.evals.metrics import corpus_bleu, sentence_bleu
from ragapp.evals.results import ItemResult, RunResult
from ragapp.evals.summary import aggregate

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "in",
    "parks",
    "near",
    "old",
    "red",
    "houses",
    "by",
    "rivers",
]


def run(name: str, items: list[ItemResult]) -> RunResult:
    return RunResult(
        1, name, "score", "completed", "d.jsonl", datetime.now(UTC), None, 1.0, {}, {}, aggregate(items), items=items
    )


def items(n: int, seed: int, shift: float = 0.0, noise: float = 0.0, ppl: float = 10.0) -> list[ItemResult]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ref = " ".join(rng.choice(WORDS) for _ in range(12))
        pred = " ".join(w if rng.random() < 0.6 else rng.choice(WORDS) for w in ref.split())
        base = (i % 10) / 10
        value = min(1.0, max(0.0, base + shift + rng.uniform(-noise, noise)))
        out.append(
            ItemResult(
                i + 1,
                f"q{i}",
                f"question {i}",
                ref,
                pred,
                metrics={"rougeL": value, "bleu": sentence_bleu(pred, ref).score, "perplexity": ppl + i % 3},
                timings={"reference_tokens": 10 + i % 5, "latency_s": 1.0 + shift},
            )
        )
    return out


def by_name(c, name: str):
    return next(m for m in c.metrics if m.name == name)


def test_identical_runs_have_zero_deltas_and_zero_width_intervals() -> None:
    a = run("a", items(40, seed=1))
    c = compare(a, run("b", items(40, seed=1)))
    assert c.paired == 40 and c.only_a == c.only_b == 0
    for m in c.metrics:
        assert m.delta == 0 and m.low == 0 and m.high == 0 and m.verdict == "same", m
    assert c.changed == []


def test_point_estimates_equal_the_run_aggregates() -> None:
    a, b = run("a", items(40, seed=1)), run("b", items(40, seed=2, shift=0.1))
    c = compare(a, b)
    for name in ("rougeL", "bleu", "perplexity", "latency_s"):
        m = by_name(c, name)
        assert m.a == pytest.approx(a.aggregates[name]) and m.b == pytest.approx(b.aggregates[name]), name
    assert by_name(c, "bleu").b == pytest.approx(
        corpus_bleu([i.prediction for i in b.items], [i.reference for i in b.items]).score
    )


def test_clear_improvement_excludes_zero_and_noise_does_not() -> None:
    a = run("a", items(60, seed=1))
    better = compare(a, run("b", items(60, seed=1, shift=0.1, noise=0.02)))
    m = by_name(better, "rougeL")
    assert 0 < m.low < m.delta < m.high and m.verdict == "better"
    assert by_name(better, "latency_s").verdict == "worse"  # latency rose by 0.1 s everywhere: lower is better
    noisy = compare(a, run("b", items(60, seed=1, noise=0.3)))
    m = by_name(noisy, "rougeL")
    assert m.low < 0 < m.high and m.verdict == "same"


def test_higher_perplexity_is_worse() -> None:
    c = compare(run("a", items(30, seed=1)), run("b", items(30, seed=1, ppl=14.0)))
    assert by_name(c, "perplexity").verdict == "worse"


def test_pairs_by_id_and_ranks_changed_items() -> None:
    a_items, b_items = items(10, seed=1), items(10, seed=1)
    b_items[3].metrics["rougeL"] = b_items[3].metrics["rougeL"] + 0.5  # type: ignore[operator]
    b_items[7].metrics["rougeL"] = 0.0
    b_items[9].item_id = "new"
    a_items[0].error, a_items[0].metrics = "failed", {}
    c = compare(run("a", a_items), run("b", b_items), top=5)
    assert (c.paired, c.only_a, c.only_b) == (8, 1, 2)  # q9 only in A; "new", and q0 (failed in A), only in B
    assert [ch.item_id for ch in c.changed] == ["q7", "q3"]  # |−0.7| before |+0.5|
    assert c.changed[0].delta == pytest.approx(-0.7)


def grounded_items(n: int, seed: int, supported: float, abstain_every: int, unparsed: int = 0) -> list[ItemResult]:
    """SYNTHETIC items with groundedness metrics: `supported` is each answer's share of supported sentences;
    every `abstain_every`-th item abstained (groundedness None); `unparsed` judge replies per answer."""
    out = items(n, seed)
    for i, item in enumerate(out):
        abstained = i % abstain_every == 0
        item.abstained = abstained
        item.metrics.update(
            groundedness=None if abstained else supported,
            abstention_rate=1.0 if abstained else 0.0,
            faithfulness=None if abstained else supported,
            judge_unparsed=None if abstained else float(unparsed),
        )
    return out


def test_groundedness_metrics_are_compared_like_the_aggregates() -> None:
    a = run("a", grounded_items(40, seed=1, supported=0.5, abstain_every=10, unparsed=0))
    b = run("b", grounded_items(40, seed=1, supported=0.9, abstain_every=4, unparsed=1))
    c = compare(a, b)
    g = by_name(c, "groundedness")
    assert g.n == 28  # 40 less the 12 abstained in A or in B
    assert g.a == pytest.approx(0.5) and g.b == pytest.approx(0.9) and g.verdict == "better"
    assert (g.low, g.high) == pytest.approx((0.4, 0.4))  # the same change on every item: no spread
    abstention = by_name(c, "abstention_rate")
    assert abstention.a == pytest.approx(a.aggregates["abstention_rate"]) and abstention.verdict == "worse"
    unparsed = by_name(c, "judge_unparsed")  # a count: summed, as the run aggregate is
    assert b.aggregates["judge_unparsed"] == 30  # one per answer in B
    assert unparsed.a == 0 and unparsed.b == 28 and unparsed.verdict == "worse"  # over the paired answers
    assert by_name(c, "faithfulness").verdict == "better"
