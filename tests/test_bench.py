"""`ragapp bench retrieval`: the BEIR reader, and a real benchmark run on a slice of Cranfield."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ragapp.connectors.beir import BeirCollection, CollectionError
from ragapp.evals.trec import read_qrels, read_trec_run

from ragapp.cli import cli
from tests.support import TEST_DATA


def write_collection(folder: Path, corpus: list[str], queries: list[str], qrels: str, split: str = "test") -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return folder


def test_reader_skips_bad_entries_and_says_why(tmp_path: Path) -> None:
    folder = write_collection(
        tmp_path / "c",
        [
            '{"_id": "1", "title": "Wings", "text": "Lift on a swept wing."}',
            "{not json",
            '{"_id": "2", "title": "", "text": "   "}',
            '{"title": "no id", "text": "x"}',
            '{"_id": 3, "title": null, "text": "Boundary layers."}',
            '{"_id": "4", "title": "x", "text": 5}',
        ],
        ['{"_id": "q1", "text": "swept wing lift"}', '{"_id": "q2", "text": ""}'],
        "q1\t1\t1\n",
    )
    collection = BeirCollection.open(folder)
    docs = list(collection.documents())
    assert [(d.source, d.title, d.text) for d in docs] == [
        ("1", "Wings", "Lift on a swept wing."),
        ("3", None, "Boundary layers."),
    ]
    assert collection.queries() == {"q1": "swept wing lift"}
    reasons = "\n".join(collection.problems)
    for expected in (
        "corpus.jsonl:2: invalid JSON",
        "corpus.jsonl:3: empty text",
        "corpus.jsonl:4: expected an object",
        "corpus.jsonl:6: text and title must be strings",
        "queries.jsonl:2: no query text",
    ):
        assert expected in reasons
    assert collection.splits() == ["test"]
    with pytest.raises(CollectionError, match=r"no split 'dev' \(found: test\)"):
        collection.qrels_path("dev")
    with pytest.raises(CollectionError, match="no queries.jsonl"):
        (folder / "queries.jsonl").unlink()
        BeirCollection.open(folder)
    with pytest.raises(CollectionError, match="not a folder"):
        BeirCollection.open(tmp_path / "missing")


def test_cli_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["-w", str(tmp_path / "ws"), "bench", "retrieval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a folder" in result.output
    folder = write_collection(tmp_path / "c", ['{"_id": "1", "text": "x"}'], ['{"_id": "q", "text": "x"}'], "q\t1\t1\n")
    result = runner.invoke(cli, ["bench", "retrieval", str(folder), "--split", "train"])
    assert result.exit_code == 2 and "no split 'train' (found: test)" in result.output
    result = runner.invoke(cli, ["bench", "retrieval", str(folder), "--fail-under", "map=0.3"])
    assert result.exit_code == 2 and "unknown metric 'map'" in result.output


def cranfield_slice(dest: Path, n_queries: int = 40, n_other: int = 50) -> Path:
    """The first `n_queries` queries, every document judged for them and `n_other` unjudged ones (about 300
    documents in all: each mode must rank the few relevant ones high among them)."""
    data = TEST_DATA / "beir" / "cranfield"
    if not (data / "corpus.jsonl").is_file():
        pytest.skip(f"Cranfield not found at {data} (set RAGAPP_TEST_DATA to the folder holding beir/)")
    qrels = read_qrels(data / "qrels" / "test.tsv")
    chosen = dict(list(qrels.items())[:n_queries])
    judged = {d for j in chosen.values() for d in j}
    corpus, others = [], 0
    for line in (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc_id = json.loads(line)["_id"]
        if doc_id in judged or others < n_other:
            others += doc_id not in judged
            corpus.append(line)
    queries = [
        q for q in (data / "queries.jsonl").read_text(encoding="utf-8").splitlines() if json.loads(q)["_id"] in chosen
    ]
    rows = "".join(f"{q}\t{d}\t{r}\n" for q, j in chosen.items() for d, r in j.items())
    return write_collection(dest, corpus, queries, rows)


@pytest.mark.slow
def test_benchmark_on_real_cranfield_matches_trec_eval(tmp_path: Path) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier (test extra) is the reference")
    folder = cranfield_slice(tmp_path / "cranfield")
    runs = tmp_path / "runs"
    kept = tmp_path / "bench-ws"  # kept for the gate run below, which then embeds nothing again
    result = CliRunner().invoke(
        cli, ["bench", "retrieval", str(folder), "--runs", str(runs), "--keep", str(kept), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    documents = len((folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines())
    assert report["queries"] == 40 and report["chunks"] >= report["documents"] == documents > 250
    qrels = read_qrels(folder / "qrels" / "test.tsv")
    assert [m["mode"] for m in report["modes"]] == ["dense", "bm25", "hybrid"]
    for mode in report["modes"]:
        metrics = mode["metrics"]
        assert set(metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}
        # Random ranking of ~300 documents would give nDCG@10 near 0.05: every mode must do far better.
        assert 0.25 < metrics["ndcg@10"] <= 1 and 0 < metrics["recall@10"] <= metrics["recall@100"] <= 1
        assert mode["queries_per_second"] > 0
        run = read_trec_run(runs / f"{mode['mode']}.trec")
        assert len(run) == 40 and all(len(docs) <= 100 for docs in run.values())
        values = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(run)
        assert metrics["ndcg@10"] == pytest.approx(sum(v["ndcg_cut_10"] for v in values.values()) / 40, abs=1e-4)
        assert metrics["recall@100"] == pytest.approx(sum(v["recall_100"] for v in values.values()) / 40, abs=1e-4)
    by_mode = {m["mode"]: m["metrics"]["ndcg@10"] for m in report["modes"]}
    assert by_mode["hybrid"] >= min(by_mode["dense"], by_mode["bm25"])  # fusion never falls below both

    # The CI gate: a floor no mode reaches fails with exit 1 and says which.
    gated = CliRunner().invoke(
        cli, ["bench", "retrieval", str(folder), "--keep", str(kept), "--mode", "bm25", "--fail-under", "ndcg@10=0.99"]
    )
    assert gated.exit_code == 1 and "bm25 ndcg@10" in gated.output and "below the required 0.99" in gated.output
