"""Answer, retrieval and groundedness metrics, all on a 0..1 scale.

ROUGE and BLEU are thin wrappers over rouge-score and sacrebleu so the numbers are exactly the ones those
libraries (and papers quoting them) report; only the scale changes (sacrebleu's 0..100 becomes 0..1).
Groundedness metrics read what `App.ask` / `App.attribute` already worked out per sentence (ragapp.attribution);
None means a metric does not apply to the item, and it is then left out of the run's mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU, BLEUScore

from ragapp.attribution import Encode, strip_marks

if TYPE_CHECKING:
    from ragapp.answer import Answer, Citation, Sentence

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# What sacrebleu.corpus_bleu uses by default; corpus_bleu_from must score pooled statistics the same way.
_CORPUS_SMOOTH = "exp"
_CORPUS_EFFECTIVE_ORDER = False


# -- ROUGE -----------------------------------------------------------------------------------------


@cache
def _scorer(stem: bool) -> rouge_scorer.RougeScorer:
    """One scorer per stemming setting: building one loads the stemmer and tokenizer."""
    return rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=stem)


def rouge(prediction: str, reference: str, stem: bool = True) -> dict[str, float]:
    """ROUGE-1/2/L; the bare name is F1, `_p` / `_r` suffixes are precision and recall."""
    scores = _scorer(stem).score(target=reference, prediction=prediction)
    out: dict[str, float] = {}
    for name in _ROUGE_TYPES:
        s = scores[name]
        # float(): rouge-score returns int 0 for rougeL on empty input.
        out.update({name: float(s.fmeasure), f"{name}_p": float(s.precision), f"{name}_r": float(s.recall)})
    return out


# -- BLEU ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bleu:
    """A BLEU score with its sufficient statistics, so corpus BLEU can be re-pooled from sentences."""

    score: float
    precisions: list[float]
    brevity_penalty: float
    counts: list[int]
    totals: list[int]
    sys_len: int
    ref_len: int

    @classmethod
    def from_sacrebleu(cls, s: BLEUScore) -> Bleu:
        return cls(
            score=s.score / 100,
            precisions=[p / 100 for p in s.precisions],
            brevity_penalty=float(s.bp),
            counts=[int(c) for c in s.counts],
            totals=[int(t) for t in s.totals],
            sys_len=int(s.sys_len),
            ref_len=int(s.ref_len),
        )


def sentence_bleu(prediction: str, reference: str) -> Bleu:
    """sacrebleu's sentence BLEU (exp smoothing, effective order), whose counts also pool into corpus BLEU."""
    return Bleu.from_sacrebleu(sacrebleu.sentence_bleu(prediction, [reference]))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> Bleu:
    """BLEU as defined: n-gram counts pooled over the corpus, not a mean of sentence scores."""
    _check_pairs(predictions, references)
    return Bleu.from_sacrebleu(sacrebleu.corpus_bleu(list(predictions), [list(references)]))


def corpus_bleu_from(parts: Sequence[Bleu]) -> Bleu:
    """`corpus_bleu` from per-sentence statistics, without re-tokenizing: cheap enough for bootstrap resampling.

    Sentence and corpus BLEU only differ in how the pooled counts are turned into a score (effective order),
    so summing sentence counts and scoring them with corpus settings gives corpus BLEU exactly.
    """
    if not parts:
        raise ValueError("corpus BLEU needs at least one sentence")
    orders = {len(p.counts) for p in parts} | {len(p.totals) for p in parts}
    if len(orders) != 1:
        raise ValueError("all parts must have the same n-gram order")
    (order,) = orders
    score = BLEU.compute_bleu(
        correct=[sum(p.counts[n] for p in parts) for n in range(order)],
        total=[sum(p.totals[n] for p in parts) for n in range(order)],
        sys_len=sum(p.sys_len for p in parts),
        ref_len=sum(p.ref_len for p in parts),
        smooth_method=_CORPUS_SMOOTH,
        effective_order=_CORPUS_EFFECTIVE_ORDER,
        max_ngram_order=order,
    )
    return Bleu.from_sacrebleu(score)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("corpus BLEU needs at least one sentence")


# -- retrieval -------------------------------------------------------------------------------------


def source_matches(expected: str, source: str, anchor: str | None) -> bool:
    """Whether a retrieved passage is the expected document (and section, if `expected` names an `#anchor`).

    Paths match when equal or when one ends the other at a "/" boundary, so a dataset can name
    "FAQ/a.html" while the index stores "/usr/share/doc/x/FAQ/a.html" — but "b-a.html" is another file.
    """
    path, hash_, want_anchor = expected.partition("#")
    if hash_ and anchor != want_anchor:
        return False
    if not path or not source:
        return path == source
    return path == source or source.endswith("/" + path) or path.endswith("/" + source)


def retrieval_metrics(ranked: Sequence[tuple[str, str | None]], expected: Sequence[str], k: int) -> dict[str, float]:
    """hit@k, recall@k, MRR@k and binary nDCG@k over the first `k` passages (best first).

    An expected item counts once, at the rank of its first matching passage, so several chunks of one
    page neither inflate recall nor add gain. Duplicate expected items are counted once.
    A rank's gain is 1 if it is the first match of any expected item; the ideal ranking has
    min(len(expected), k) gains on top.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    wanted = list(dict.fromkeys(expected))
    if not wanted:
        raise ValueError("retrieval metrics need at least one expected source")
    first_rank: dict[str, int] = {}
    first_any = 0
    for rank, (source, anchor) in enumerate(ranked[:k], start=1):
        for item in wanted:
            if item not in first_rank and source_matches(item, source, anchor):
                first_rank[item] = rank
        if first_rank and not first_any:
            first_any = rank
    gain_ranks = set(first_rank.values())
    dcg = sum(1 / math.log2(r + 1) for r in gain_ranks)
    idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(wanted), k) + 1))
    return {
        f"hit@{k}": 1.0 if first_rank else 0.0,
        f"recall@{k}": len(first_rank) / len(wanted),
        f"mrr@{k}": 1 / first_any if first_any else 0.0,
        f"ndcg@{k}": dcg / idcg,
    }


# -- language modelling ----------------------------------------------------------------------------


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp of the mean per-token negative log-likelihood (natural log)."""
    if tokens < 1:
        raise ValueError(f"perplexity needs at least one token, not {tokens}")
    return math.exp(nll_sum / tokens)


# -- groundedness ----------------------------------------------------------------------------------

GROUNDING = ("groundedness", "citation_precision", "citation_recall", "answer_relevance", "abstention_rate")


def groundedness(sentences: Sequence[Sentence], abstained: bool) -> float | None:
    """The share of the answer's sentences that cite at least one passage. None for an abstained answer
    (it says it found nothing, which is neither grounded nor not) or one with no sentences."""
    if abstained or not sentences:
        return None
    return sum(1 for s in sentences if s.citations) / len(sentences)


def _matches_any(expected: Sequence[str], citation: Citation) -> bool:
    return any(source_matches(e, citation.source, citation.anchor) for e in expected)


def citation_precision(citations: Sequence[Citation], expected: Sequence[str]) -> float | None:
    """The share of cited passages that come from an expected source. None without expected sources or
    when nothing is cited (no citation can be wrong then; `groundedness` says the answer is unsupported)."""
    cited = [c for c in citations if c.cited]
    if not expected or not cited:
        return None
    return sum(1 for c in cited if _matches_any(expected, c)) / len(cited)


def citation_recall(citations: Sequence[Citation], expected: Sequence[str]) -> float | None:
    """The share of expected sources that some cited passage comes from; None without expected sources."""
    wanted = list(dict.fromkeys(expected))
    if not wanted:
        return None
    cited = [c for c in citations if c.cited]
    return sum(1 for e in wanted if any(source_matches(e, c.source, c.anchor) for c in cited)) / len(wanted)


def answer_relevance(question: str, answer: str, encode: Encode) -> float | None:
    """How well the answer addresses the question: the cosine of their embeddings (unit vectors from
    `encode`, [n] marks left out), clipped to 0..1. None when either is empty."""
    texts = [strip_marks(question), strip_marks(answer)]
    if not all(t.strip() for t in texts):
        return None
    q, a = encode(texts)
    return float(np.clip(np.dot(q, a), 0.0, 1.0))


def grounding_metrics(answer: Answer, expected: Sequence[str], encode: Encode) -> dict[str, float | None]:
    """Every groundedness metric of one attributed answer (see GROUNDING)."""
    relevance = None if answer.abstained else answer_relevance(answer.question, answer.answer, encode)
    return {
        "groundedness": groundedness(answer.sentences, answer.abstained),
        "citation_precision": citation_precision(answer.citations, expected),
        "citation_recall": citation_recall(answer.citations, expected),
        "answer_relevance": relevance,
        "abstention_rate": 1.0 if answer.abstained else 0.0,
    }
