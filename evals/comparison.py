"""Two runs side by side: per-metric deltas with paired bootstrap confidence intervals.

Items are paired by id. The interval is a percentile bootstrap over paired items, resampling
questions with replacement and recomputing each statistic as the run-level aggregate does (corpus
BLEU from pooled n-gram counts, as in Koehn 2004 and sacrebleu's paired bootstrap; token-pooled
perplexity; sums for counts such as `judge_unparsed`; means for the rest). All metrics share one set of
resamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ragapp.evals.metrics import Bleu, corpus_bleu_from, sentence_bleu
from ragapp.evals.results import ItemResult, RunResult
from ragapp.evals.summary import LOWER_IS_BETTER, SUMMED, metric_names

RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricDelta:
    name: str
    a: float
    b: float
    low: float  # confidence interval of b - a
    high: float
    n: int  # paired items the metric applies to

    @property
    def delta(self) -> float:
        return self.b - self.a

    @property
    def verdict(self) -> str:
        """ "better" / "worse" when the interval excludes 0, else "same"."""
        if self.low <= 0 <= self.high:
            return "same"
        up = self.low > 0
        return "worse" if up == (self.name in LOWER_IS_BETTER) else "better"


@dataclass(frozen=True)
class ItemChange:
    item_id: str
    question: str
    a: float
    b: float
    prediction_a: str
    prediction_b: str

    @property
    def delta(self) -> float:
        return self.b - self.a


@dataclass
class Comparison:
    a: RunResult
    b: RunResult
    paired: int
    only_a: int
    only_b: int
    metrics: list[MetricDelta]
    by: str  # the metric the changed items are ranked by
    changed: list[ItemChange]
    confidence: float


Statistic = Callable[[np.ndarray], np.ndarray]  # resampled index rows (R × n) -> one value per row


def _mean_stat(values: np.ndarray) -> Statistic:
    return lambda rows: values[rows].mean(axis=1)


def _sum_stat(values: np.ndarray) -> Statistic:
    return lambda rows: values[rows].sum(axis=1)


def _bleu_stat(parts: Sequence[Bleu]) -> Statistic:
    return lambda rows: np.array([corpus_bleu_from([parts[j] for j in row]).score for row in rows])


def _perplexity_stat(log_ppl: np.ndarray, tokens: np.ndarray) -> Statistic:
    return lambda rows: np.exp((log_ppl[rows] * tokens[rows]).sum(axis=1) / tokens[rows].sum(axis=1))


def _statistics(items: list[ItemResult], name: str) -> Statistic | None:
    if name == "bleu":
        return _bleu_stat([sentence_bleu(i.prediction, i.reference) for i in items])
    if name == "perplexity":
        tokens = np.array([i.timings.get("reference_tokens") or 0 for i in items], dtype=float)
        if tokens.min(initial=1) <= 0:
            return None
        return _perplexity_stat(np.log([float(i.metrics["perplexity"]) for i in items]), tokens)  # type: ignore[arg-type]
    values = np.array([float(i.metrics[name]) for i in items])  # type: ignore[arg-type]
    return _sum_stat(values) if name in SUMMED else _mean_stat(values)


def compare(
    a: RunResult,
    b: RunResult,
    by: str = "rougeL",
    top: int = 5,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """Deltas b - a for every per-item metric both runs have (plus latency), and the `top` items whose
    `by` metric changed most."""
    a_items = {i.item_id: i for i in a.scored}
    b_items = {i.item_id: i for i in b.scored}
    ids = [i for i in a_items if i in b_items]
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    deltas: list[MetricDelta] = []
    shared = [m for m in metric_names([a_items[i] for i in ids]) if m in set(metric_names([b_items[i] for i in ids]))]
    for name in shared:
        keep = [i for i in ids if a_items[i].metrics.get(name) is not None and b_items[i].metrics.get(name) is not None]
        if not keep:
            continue
        stat_a = _statistics([a_items[i] for i in keep], name)
        stat_b = _statistics([b_items[i] for i in keep], name)
        if stat_a is None or stat_b is None:
            continue
        whole = np.arange(len(keep))[None, :]
        rows = rng.integers(0, len(keep), size=(resamples, len(keep)))
        diff = stat_b(rows) - stat_a(rows)
        low, high = np.percentile(diff, [tail, 100 - tail])
        deltas.append(
            MetricDelta(name, float(stat_a(whole)[0]), float(stat_b(whole)[0]), float(low), float(high), len(keep))
        )
    latency = [i for i in ids if "latency_s" in a_items[i].timings and "latency_s" in b_items[i].timings]
    if latency:
        va = np.array([a_items[i].timings["latency_s"] for i in latency], dtype=float)
        vb = np.array([b_items[i].timings["latency_s"] for i in latency], dtype=float)
        rows = rng.integers(0, len(latency), size=(resamples, len(latency)))
        low, high = np.percentile(vb[rows].mean(axis=1) - va[rows].mean(axis=1), [tail, 100 - tail])
        deltas.append(
            MetricDelta("latency_s", float(va.mean()), float(vb.mean()), float(low), float(high), len(latency))
        )
    changed = []
    for i in ids:
        va_, vb_ = a_items[i].metrics.get(by), b_items[i].metrics.get(by)
        if va_ is not None and vb_ is not None and not math.isclose(va_, vb_):
            x, y = a_items[i], b_items[i]
            changed.append(ItemChange(i, x.question, va_, vb_, x.prediction, y.prediction))
    changed.sort(key=lambda c: -abs(c.delta))
    return Comparison(
        a=a,
        b=b,
        paired=len(ids),
        only_a=len(a_items.keys() - b_items.keys()),
        only_b=len(b_items.keys() - a_items.keys()),
        metrics=deltas,
        by=by,
        changed=changed[:top],
        confidence=confidence,
    )
