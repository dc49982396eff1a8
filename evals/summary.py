"""Run-level numbers from per-item results.

Most aggregates are means over the items a metric applies to. Some are not, because the means would
mislead: `bleu` is corpus BLEU (n-gram counts pooled over all answers, as BLEU is defined and as
sacrebleu reports it; per-item `bleu` is sentence BLEU), and `perplexity` pools token log-likelihoods
(exp of the mean NLL over every reference token, so long references weigh by their length). The LLM
judge's troubles are counts, so that a gate can demand none: `judge_unparsed` sums the replies that could
not be read, `judge_errors` counts the answers the judge failed on (HTTP errors after retries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from ragapp.evals.metrics import corpus_bleu
from ragapp.evals.results import ItemResult, Metrics

# Metrics where a smaller value is the better one; every other metric is "higher is better".
LOWER_IS_BETTER = frozenset(
    {"perplexity", "latency_s", "latency_p50_s", "latency_p95_s", "abstention_rate", "judge_unparsed", "judge_errors"}
)
# Per-item counts whose run-level value is their sum, not their mean.
SUMMED = frozenset({"judge_unparsed"})
# Timings averaged into the aggregates (the rest of `timings` is detail).
_MEAN_TIMINGS = ("latency_s", "prompt_tokens", "completion_tokens")


def metric_names(items: Sequence[ItemResult]) -> list[str]:
    """Per-item metric names in first-seen order."""
    names: dict[str, None] = {}
    for item in items:
        names.update(dict.fromkeys(item.metrics))
    return list(names)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def aggregate(items: Sequence[ItemResult]) -> Metrics:
    scored = [i for i in items if i.error is None]
    out: Metrics = {}
    for name in metric_names(scored):
        values = [v for i in scored if (v := i.metrics.get(name)) is not None]
        out[name] = float(sum(values)) if name in SUMMED else _mean(values)
    if "judge_unparsed" in out:  # a judged run: how many answers the judge failed on
        out["judge_errors"] = float(sum(1 for i in scored if i.judge and i.judge.get("error")))
    if scored:
        bleu = corpus_bleu([i.prediction for i in scored], [i.reference for i in scored])
        out["bleu"] = bleu.score
        out["bleu_bp"] = bleu.brevity_penalty
        out.update({f"bleu_p{n}": p for n, p in enumerate(bleu.precisions, start=1)})
    weighted = [
        (i.timings["reference_tokens"], math.log(ppl))
        for i in scored
        if (ppl := i.metrics.get("perplexity")) is not None and i.timings.get("reference_tokens")
    ]
    if weighted:
        tokens = sum(t for t, _ in weighted)
        out["perplexity"] = math.exp(sum(t * log_ppl for t, log_ppl in weighted) / tokens)
    for name in _MEAN_TIMINGS:
        values = [float(v) for i in scored if (v := i.timings.get(name)) is not None]
        if values:
            out[name] = _mean(values)
            if name == "latency_s":
                out["latency_p50_s"] = float(np.percentile(values, 50))
                out["latency_p95_s"] = float(np.percentile(values, 95))
    return out
