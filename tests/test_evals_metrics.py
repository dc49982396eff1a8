"""ragapp.evals.metrics: the course's worked examples, exact agreement with rouge-score / sacrebleu, retrieval
metrics, and the groundedness metrics on HAND-MADE Answers (sentences, citations and vectors written by hand
to pin the definitions; the runner's tests compute them on real answers)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sacrebleu
from ragapp.evals.metrics import (
    GROUNDING,
    Bleu,
    answer_relevance,
    citation_precision,
    citation_recall,
    corpus_bleu,
    corpus_bleu_from,
    groundedness,
    grounding_metrics,
    perplexity,
    retrieval_metrics,
    rouge,
    sentence_bleu,
    source_matches,
)
from rouge_score import rouge_scorer
from sklearn.metrics import ndcg_score

from ragapp.answer import Answer, Citation, Quote, Sentence

PAIRS = [  # (prediction, reference)
    ("I am very happy that I am drinking a cup of tea", "I am very happy to say that I am drinking a warm cup of tea"),
    ("very cold outside", "It is cold outside"),
    ("cold cold cold cold", "It is cold outside"),
    ("running dogs", "the dog runs"),
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("Use `ragapp ingest DIR` to add files, then ask.", "Run ragapp ingest on the folder, then ask questions."),
    ("Nothing in common here", "Completely different words entirely"),
    ("A, B; and C!", "a b and c"),
]


# -- the course's worked examples ----------------------------------------------------------------


def test_bleu_course_example() -> None:
    b = sentence_bleu(*PAIRS[0])
    assert round(b.score, 3) == 0.495
    assert [round(p, 3) for p in b.precisions] == [1.0, 0.818, 0.6, 0.333]
    assert round(b.brevity_penalty, 3) == 0.779
    assert (b.sys_len, b.ref_len) == (12, 15)
    assert b.counts == [12, 9, 6, 3] and b.totals == [12, 11, 10, 9]


def test_rouge_course_example() -> None:
    r = rouge("very cold outside", "It is cold outside")
    assert r["rouge1_r"] == pytest.approx(0.5)
    assert round(r["rouge1_p"], 3) == 0.667
    assert round(r["rouge1"], 3) == 0.571


def test_clipping() -> None:
    """A repeated word is credited at most as often as the reference has it."""
    assert rouge("cold cold cold cold", "It is cold outside")["rouge1_p"] == pytest.approx(0.25)
    b = sentence_bleu("cold cold cold cold", "It is cold outside")
    assert b.counts[0] == 1 and b.totals[0] == 4 and b.precisions[0] == pytest.approx(0.25)


# -- agreement with the libraries ----------------------------------------------------------------


@pytest.mark.parametrize("stem", [True, False])
@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_rouge_equals_library(prediction: str, reference: str, stem: bool) -> None:
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem).score(reference, prediction)
    ours = rouge(prediction, reference, stem=stem)
    assert set(ours) == {f"{n}{s}" for n in ("rouge1", "rouge2", "rougeL") for s in ("", "_p", "_r")}
    for name, score in direct.items():
        assert (ours[name], ours[f"{name}_p"], ours[f"{name}_r"]) == (score.fmeasure, score.precision, score.recall)


def test_rouge_argument_order() -> None:
    """Precision is over the prediction, recall over the reference: swapping them must swap p and r."""
    r = rouge("cold outside", "It is cold outside")
    assert (r["rouge1_p"], r["rouge1_r"]) == (1.0, 0.5)


def test_stemming_changes_the_score() -> None:
    stemmed, plain = rouge("running dogs", "the dog runs"), rouge("running dogs", "the dog runs", stem=False)
    assert plain["rouge1"] == 0.0
    assert stemmed["rouge1_p"] == 1.0 and stemmed["rouge1_r"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_sentence_bleu_equals_library(prediction: str, reference: str) -> None:
    direct = sacrebleu.sentence_bleu(prediction, [reference])
    ours = sentence_bleu(prediction, reference)
    assert ours.score == direct.score / 100
    assert ours.precisions == [p / 100 for p in direct.precisions]
    assert ours.brevity_penalty == direct.bp
    assert (ours.counts, ours.totals, ours.sys_len, ours.ref_len) == (
        direct.counts,
        direct.totals,
        direct.sys_len,
        direct.ref_len,
    )


def test_corpus_bleu_equals_library() -> None:
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    direct = sacrebleu.corpus_bleu(preds, [refs])
    ours = corpus_bleu(preds, refs)
    assert ours.score == direct.score / 100 and ours.brevity_penalty == direct.bp
    assert ours.precisions == [p / 100 for p in direct.precisions]
    assert ours.score != pytest.approx(np.mean([sentence_bleu(p, r).score for p, r in PAIRS]))  # pooled, not averaged


def _random_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences over a small vocabulary, so higher-order n-grams sometimes match and sometimes don't."""
    rng = random.Random(seed)
    vocab = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "park", "and", "big", "red", ",", "."]

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14)))

    pairs = [(sentence(), sentence()) for _ in range(n)]
    for i in range(0, n, 7):  # some near-copies, so 3- and 4-gram counts are not all zero
        words = pairs[i][1].split()
        pairs[i] = (" ".join(words[: max(1, len(words) - 2)] + ["dog"]), pairs[i][1])
    return pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corpus_bleu_from_sentence_stats_is_exact(seed: int) -> None:
    pairs = _random_pairs(60, seed)
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    parts = [sentence_bleu(p, r) for p, r in pairs]
    assert corpus_bleu_from(parts) == corpus_bleu(preds, refs)  # every field, exactly
    # and on a resample with repeats, as bootstrap uses it
    idx = random.Random(seed).choices(range(len(pairs)), k=len(pairs))
    assert corpus_bleu_from([parts[i] for i in idx]) == corpus_bleu([preds[i] for i in idx], [refs[i] for i in idx])


def test_corpus_bleu_from_does_not_mutate_parts() -> None:
    parts = [sentence_bleu(p, r) for p, r in PAIRS]
    before = [(list(p.counts), list(p.totals)) for p in parts]
    corpus_bleu_from(parts)
    assert [(p.counts, p.totals) for p in parts] == before


def test_corpus_bleu_input_errors() -> None:
    with pytest.raises(ValueError):
        corpus_bleu([], [])
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        corpus_bleu_from([])


def test_empty_strings() -> None:
    """Whatever the libraries do with empty text: zeros, never an exception."""
    for pred, ref in [("", "a reference"), ("a prediction", ""), ("", "")]:
        assert all(v == 0.0 for v in rouge(pred, ref).values())
        assert sentence_bleu(pred, ref).score == 0.0
    assert sentence_bleu("", "a reference").brevity_penalty == 0.0  # no output at all: sacrebleu's BP is 0
    assert sentence_bleu("a prediction", "").brevity_penalty == 1.0
    assert corpus_bleu(["", "the cat sat"], ["a reference", "the cat sat"]) == corpus_bleu_from(
        [sentence_bleu("", "a reference"), sentence_bleu("the cat sat", "the cat sat")]
    )
    assert isinstance(sentence_bleu("", ""), Bleu)


# -- retrieval -----------------------------------------------------------------------------------

DOC = "/usr/share/doc/x/FAQ"


@pytest.mark.parametrize(
    ("expected", "source", "anchor", "match"),
    [
        ("a.html", f"{DOC}/a.html", None, True),
        ("FAQ/a.html", f"{DOC}/a.html", "top", True),
        (f"{DOC}/a.html", "a.html", None, True),  # either side may be the shorter one
        (f"{DOC}/a.html", f"{DOC}/a.html", None, True),
        ("a.html", f"{DOC}/b-a.html", None, False),  # a suffix, but not at a "/" boundary
        ("ocs/guide.md", "docs/guide.md", None, False),
        ("docs/guide.md", "docs/guide.md", None, True),
        ("a.html#whatisfaq", f"{DOC}/a.html", "whatisfaq", True),
        ("a.html#whatisfaq", f"{DOC}/a.html", "other", False),
        ("a.html#whatisfaq", f"{DOC}/a.html", None, False),
        ("a.html", f"{DOC}/a.html", "any-anchor", True),
        ("b.html#whatisfaq", f"{DOC}/a.html", "whatisfaq", False),
    ],
)
def test_source_matches(expected: str, source: str, anchor: str | None, match: bool) -> None:
    assert source_matches(expected, source, anchor) is match


def _dcg(ranks: list[int]) -> float:
    return sum(1 / math.log2(r + 1) for r in ranks)


def test_retrieval_hand_computed() -> None:
    ranked = [(f"{DOC}/z.html", None), (f"{DOC}/a.html", "s1"), (f"{DOC}/z.html", None), (f"{DOC}/b.html", None)]
    m = retrieval_metrics(ranked, ["a.html", "b.html", "c.html"], k=4)
    assert m == pytest.approx({"hit@4": 1.0, "recall@4": 2 / 3, "mrr@4": 0.5, "ndcg@4": _dcg([2, 4]) / _dcg([1, 2, 3])})
    # only the first k passages count: b.html at rank 4 is out of a top-3
    m3 = retrieval_metrics(ranked, ["a.html", "b.html", "c.html"], k=3)
    assert m3 == pytest.approx({"hit@3": 1.0, "recall@3": 1 / 3, "mrr@3": 0.5, "ndcg@3": _dcg([2]) / _dcg([1, 2, 3])})
    assert retrieval_metrics(ranked, ["nope.html"], k=4) == {"hit@4": 0.0, "recall@4": 0.0, "mrr@4": 0.0, "ndcg@4": 0.0}
    perfect = retrieval_metrics([("a.html", None), ("b.html", None)], ["b.html", "a.html"], k=5)
    assert perfect == {"hit@5": 1.0, "recall@5": 1.0, "mrr@5": 1.0, "ndcg@5": 1.0}


def test_repeated_page_counts_once() -> None:
    """Three chunks of a.html are one found document, not three."""
    ranked = [("a.html", "s1"), ("a.html", "s2"), ("a.html", "s3"), ("b.html", None)]
    m = retrieval_metrics(ranked, ["a.html", "b.html"], k=4)
    assert m["recall@4"] == 1.0 and m["mrr@4"] == 1.0
    assert m["ndcg@4"] == pytest.approx(_dcg([1, 4]) / _dcg([1, 2]))
    only_a = retrieval_metrics(ranked, ["a.html"], k=4)
    assert only_a["ndcg@4"] == 1.0 and only_a["recall@4"] == 1.0


def test_anchor_in_expected() -> None:
    ranked = [("a.html", "intro"), ("a.html", "whatisfaq"), ("b.html", None)]
    m = retrieval_metrics(ranked, ["a.html#whatisfaq"], k=3)
    assert m["mrr@3"] == 0.5 and m["hit@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(3))


def test_duplicate_expected_counted_once() -> None:
    m = retrieval_metrics([("a.html", None)], ["a.html", "a.html"], k=3)
    assert m["recall@3"] == 1.0 and m["ndcg@3"] == 1.0


def _sklearn_ndcg(ranked: list[tuple[str, str | None]], expected: list[str], k: int) -> float:
    """sklearn's nDCG on binary gains; unretrieved expected items sit below every retrieved rank."""
    found: set[str] = set()
    gains = []
    for source, anchor in ranked[:k]:
        new = {e for e in expected if e not in found and source_matches(e, source, anchor)}
        found |= new
        gains.append(1.0 if new else 0.0)
    gains += [0.0] * (k - len(gains))  # a short list: the empty ranks up to k gain nothing
    gains += [1.0] * (len(expected) - len(found))  # relevant but not retrieved in the top k
    gains += [0.0] * max(0, 2 - len(gains))  # sklearn needs at least two "documents"
    scores = np.arange(len(gains), 0, -1, dtype=float)
    return float(ndcg_score([gains], [scores], k=k))


def test_ndcg_matches_sklearn() -> None:
    rng = random.Random(7)
    pages = [f"{DOC}/{c}.html" for c in "abcdefgh"]
    checked = 0
    for _ in range(200):
        ranked: list[tuple[str, str | None]] = [(rng.choice(pages), None) for _ in range(rng.randint(0, 10))]
        expected = rng.sample([p.rsplit("/", 1)[1] for p in pages], rng.randint(1, 4))
        k = rng.randint(1, 10)
        got = retrieval_metrics(ranked, expected, k)[f"ndcg@{k}"]
        assert got == pytest.approx(_sklearn_ndcg(ranked, expected, k), abs=1e-12)
        checked += got > 0
    assert checked > 50  # most cases are non-trivial


def test_retrieval_errors() -> None:
    with pytest.raises(ValueError):
        retrieval_metrics([("a.html", None)], [], k=3)
    with pytest.raises(ValueError):
        retrieval_metrics([("a.html", None)], ["a.html"], k=0)
    assert retrieval_metrics([], ["a.html"], k=3)["ndcg@3"] == 0.0


# -- perplexity ----------------------------------------------------------------------------------


def test_perplexity() -> None:
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


# -- groundedness (HAND-MADE answers) ------------------------------------------------------------------


def _sentence(text: str, *cites: int) -> Sentence:
    return Sentence(text, list(cites), 0.8 if cites else 0.2, Quote(7, 0, 10) if cites else None)


def _citation(n: int, source: str, cited: bool, anchor: str | None = None) -> Citation:
    return Citation(n, source, None, anchor, None, 100 + n, 0.5, cited, f"passage {n}")


def _answer(sentences: list[Sentence], citations: list[Citation], abstained: bool = False) -> Answer:
    """A HAND-MADE Answer: `cited` set as App.ask sets it (exactly the passages some sentence cites)."""
    text = " ".join(s.text for s in sentences) or "I could not find this in the documents."
    return Answer(
        "How are hidden files handled?", text, citations, "hand-made", sentences=sentences, abstained=abstained
    )


HAND_MADE = _answer(
    [
        _sentence("Hidden files are skipped.", 1),
        _sentence("Links to folders are not followed.", 1, 3),
        _sentence("Bananas are grown in Ecuador."),
        _sentence("Ingest reads PDF files too.", 2),
    ],
    [
        _citation(1, "/corpus/docs/ingesting.md", True),
        _citation(2, "/corpus/docs/asking.md", True, "stop"),
        _citation(3, "/corpus/docs/ingesting.md", True),
        _citation(4, "/corpus/docs/workspace.md", False),
    ],
)


def test_groundedness_is_the_share_of_sentences_with_a_citation() -> None:
    assert groundedness(HAND_MADE.sentences, False) == 0.75
    assert groundedness([_sentence("Nothing supports this.")], False) == 0.0
    assert groundedness(HAND_MADE.sentences, True) is None  # abstained: not defined
    assert groundedness([], False) is None  # no sentences: not defined


def test_citation_precision_and_recall_against_gold_sources() -> None:
    cits = HAND_MADE.citations
    # Cited: 1 and 3 (ingesting.md), 2 (asking.md#stop); 4 (workspace.md) is only retrieved.
    assert citation_precision(cits, ["ingesting.md"]) == pytest.approx(2 / 3)
    assert citation_recall(cits, ["ingesting.md"]) == 1.0
    assert citation_recall(cits, ["ingesting.md", "workspace.md"]) == 0.5  # retrieved but not cited: not recalled
    assert citation_precision(cits, ["ingesting.md", "asking.md#stop"]) == 1.0  # the anchor matches too
    assert citation_precision(cits, ["asking.md#other"]) == 0.0
    assert citation_recall(cits, ["docs/ingesting.md", "docs/ingesting.md"]) == 1.0  # a repeated source counts once
    assert citation_precision(cits, []) is None and citation_recall(cits, []) is None  # no gold sources
    nothing_cited = [_citation(1, "/corpus/docs/ingesting.md", False)]
    assert citation_precision(nothing_cited, ["ingesting.md"]) is None  # nothing cited: no precision
    assert citation_recall(nothing_cited, ["ingesting.md"]) == 0.0


def _encoder(vectors: dict[str, list[float]], seen: list[str]):
    """A HAND-MADE encoder: fixed unit vectors per text, and a record of what it was asked to embed."""

    def encode(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    return encode


def test_answer_relevance_is_the_clipped_cosine_without_marks() -> None:
    seen: list[str] = []
    encode = _encoder({"Q?": [1.0, 0.0], "Close answer.": [0.6, 0.8], "Opposite.": [-0.6, 0.8]}, seen)
    assert answer_relevance("Q?", "Close answer. [1]", encode) == pytest.approx(0.6)
    assert seen == ["Q?", "Close answer."]  # [n] marks are not part of what the answer says
    assert answer_relevance("Q?", "Opposite.", encode) == 0.0  # negative cosine clipped to 0
    assert answer_relevance("", "Close answer.", encode) is None


def test_grounding_metrics_of_an_answer_and_of_an_abstention() -> None:
    encode = _encoder({"How are hidden files handled?": [1.0, 0.0], HAND_MADE.answer: [0.8, 0.6]}, [])
    m = grounding_metrics(HAND_MADE, ["ingesting.md"], encode)
    assert tuple(m) == GROUNDING
    assert m == pytest.approx(
        {
            "groundedness": 0.75,
            "citation_precision": 2 / 3,
            "citation_recall": 1.0,
            "answer_relevance": 0.8,
            "abstention_rate": 0.0,
        }
    )
    abstained = _answer([], [_citation(1, "/corpus/docs/ingesting.md", False)], abstained=True)
    m = grounding_metrics(abstained, ["ingesting.md"], _encoder({}, []))  # nothing is embedded for it
    assert m == {
        "groundedness": None,
        "citation_precision": None,
        "citation_recall": 0.0,
        "answer_relevance": None,
        "abstention_rate": 1.0,
    }
    assert grounding_metrics(abstained, [], _encoder({}, []))["citation_recall"] is None  # no gold sources
