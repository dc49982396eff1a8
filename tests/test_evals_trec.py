"""evals/trec: our ranking metrics against the reference implementation (trec_eval via pytrec_eval)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from ragapp.evals.trec import evaluate, per_query, read_qrels, read_trec_run, trec_order, write_trec_run

from tests.support import TEST_DATA

pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier (test extra) is the reference")

REFERENCE = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100"}


def reference(run: dict, qrels: dict) -> dict[str, float]:
    """trec_eval's means over the queries pytrec_eval scores (judged, with relevant docs, present in the run)."""
    scored = {q: j for q, j in qrels.items() if q in run and any(r >= 1 for r in j.values())}
    values = pytrec_eval.RelevanceEvaluator(scored, set(REFERENCE.values())).evaluate(run)
    top10 = {q: {d: run[q][d] for d in trec_order(run[q])[:10]} for q in run}
    mrr = pytrec_eval.RelevanceEvaluator(scored, {"recip_rank"}).evaluate(top10)
    out = {ours: sum(v[theirs] for v in values.values()) / len(values) for ours, theirs in REFERENCE.items()}
    out["mrr@10"] = sum(v["recip_rank"] for v in mrr.values()) / len(mrr)
    return out


def random_case(seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 30))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3, 4]) for d in judged}
        if q % 10 == 0:
            qrels[qid][judged[0]] = 2  # at least one relevant
        retrieved = rng.sample(docs, rng.randint(0, 150))
        # Coarse scores make ties common: trec_eval breaks them by doc id, descending.
        run[qid] = {d: float(rng.randint(0, 20)) for d in retrieved}
    run["unjudged"] = {"d1": 1.0}
    return run, qrels


@pytest.mark.parametrize("seed", range(5))
def test_random_runs_with_ties_match_trec_eval(seed: int) -> None:
    run, qrels = random_case(seed)
    scored = {q: j for q, j in qrels.items() if any(r >= 1 for r in j.values())}
    ours = evaluate({q: run[q] for q in scored if q in run}, {q: scored[q] for q in scored if q in run})
    theirs = reference(run, qrels)
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_hand_computed_values() -> None:
    qrels = {"q": {"a": 3, "b": 1, "c": 0, "z": 2}}
    run = {"q": {"c": 9.0, "a": 8.0, "x": 7.0, "b": 7.0}}  # tie x/b: trec_eval puts "x" before "b"
    assert trec_order(run["q"]) == ["c", "a", "x", "b"]
    dcg = 3 / math.log2(3) + 1 / math.log2(5)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    got = per_query(run, qrels, ["ndcg@10", "ndcg@1", "recall@2", "recall@10", "mrr@10", "mrr@1"])["q"]
    assert got == pytest.approx(
        {"ndcg@10": dcg / ideal, "ndcg@1": 0.0, "recall@2": 1 / 3, "recall@10": 2 / 3, "mrr@10": 0.5, "mrr@1": 0.0}
    )
    assert evaluate(run, qrels) == pytest.approx(reference(run, qrels))


def test_judged_queries_missing_from_the_run_score_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has nothing relevant: not scored
    run = {"q1": {"a": 1.0}}
    assert set(per_query(run, qrels)) == {"q1", "q2"}
    assert evaluate(run, qrels)["ndcg@10"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(run, qrels, ["map"])


def test_run_file_round_trip_scores_the_same(tmp_path: Path) -> None:
    run, qrels = random_case(11)
    write_trec_run(tmp_path / "run.trec", run, "ragapp-test")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0].split()[1] == "Q0" and lines[0].split()[5] == "ragapp-test"
    back = read_trec_run(tmp_path / "run.trec")
    assert back == {q: d for q, d in run.items() if d}  # a query without documents has no line
    judged = {q: j for q, j in qrels.items() if q in back}
    assert evaluate(back, judged) == pytest.approx(reference(back, judged), abs=1e-9)
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1\n")
    with pytest.raises(ValueError, match="6 fields"):
        read_trec_run(tmp_path / "bad.trec")


def test_qrels_formats(tmp_path: Path) -> None:
    (tmp_path / "beir.tsv").write_text("query-id\tcorpus-id\tscore\n1\t10\t2\n1\t11\t0\n2\t10\t1\n")
    (tmp_path / "trec.txt").write_text("1 0 10 2\n1 0 11 0\n\n2 0 10 1\n")
    expected = {"1": {"10": 2, "11": 0}, "2": {"10": 1}}
    assert read_qrels(tmp_path / "beir.tsv") == expected == read_qrels(tmp_path / "trec.txt")
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\n1\t10\thigh\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        read_qrels(tmp_path / "bad.tsv")


def test_real_graded_qrels_with_a_synthetic_run() -> None:
    data = TEST_DATA
    path = data / "beir" / "cranfield" / "qrels" / "test.tsv"
    if not path.is_file():
        pytest.skip(f"Cranfield qrels not found at {path} (set RAGAPP_TEST_DATA)")
    qrels = read_qrels(path)
    assert len(qrels) == 225 and {r for j in qrels.values() for r in j.values()} <= {1, 2, 3, 4}
    rng = random.Random(3)
    docs = sorted({d for j in qrels.values() for d in j})
    run = {}
    for qid, judged in qrels.items():
        # Some relevant documents mixed into random ones, at random depths: a realistic spread of scores.
        run[qid] = {d: round(rng.random(), 2) for d in rng.sample(docs, 120)}
        run[qid].update({d: round(rng.uniform(0.5, 1.0), 2) for d in rng.sample(sorted(judged), len(judged) // 2 + 1)})
    ours, theirs = evaluate(run, qrels), reference(run, qrels)
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert 0.05 < ours["ndcg@10"] < 0.95  # neither trivial nor perfect
