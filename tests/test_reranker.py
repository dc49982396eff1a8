"""Reranking and the retriever's training: `ragapp reranker train`, `ragapp embedder train`, and a trained
reranker in search, ask, the CLI and HTTP. Real models (the shipped MiniLM, SmolLM2 for synthetic
questions), a real workspace of ragapp's docs; the store is incidental here (SQLite)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from ragapp import App
from ragapp.cli import cli
from ragapp.errors import ConfigError, UsageError
from ragapp.reranker import META_FILE, Reranker, combine, first_stage_prior
from ragapp.retriever_data import Wanted, mine, read_examples, synthetic_wanted
from ragapp.retriever_training import (
    BLENDS,
    REPORT_FILE,
    _rows,
    choose_blend,
    fit_prior_weight,
    mrr_at_10,
    train_embedder,
    train_reranker,
)
from ragapp.training_data import TrainingDataError
from tests.support import DOCS, IngestedDocs

pytestmark = pytest.mark.slow

HEADING = re.compile(r"^## (.+)$", re.MULTILINE)


def heading_questions(docs: Path, per_file: int = 3) -> list[dict[str, Any]]:
    """{question, sources} lines: a section's heading asks for that file (real titles written for people)."""
    rows = []
    for path in sorted(docs.glob("*.md")):
        for heading in HEADING.findall(path.read_text(encoding="utf-8"))[:per_file]:
            rows.append({"question": heading.strip(), "sources": path.name})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(workspace: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["-w", str(workspace), *args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, docs_workspaces: Any) -> tuple[Path, Path, Any]:
    """(workspace, reranker folder, report): a reranker trained once on heading questions about docs/."""
    root = tmp_path_factory.mktemp("reranker")
    template = docs_workspaces.template(None)
    workspace = root / "ws"
    import shutil

    shutil.copytree(template.folder, workspace)
    with App(workspace) as app:
        questions = heading_questions(DOCS, per_file=1)[:12]
        examples, stats = mine(app, read_examples(write_jsonl(root / "q.jsonl", questions)), negatives=2)
        assert stats["answer_not_found"] == 0
        # Small and short (a test's budget): memorising 10 questions shows that it learns.
        report = train_reranker(
            examples, root / "reranker", epochs=4, batch_size=4, learning_rate=1e-4, max_length=48, validation=0.2
        )
    return workspace, root / "reranker", report


# -- control flow (no model) --------------------------------------------------------------------------


def test_blend_zero_keeps_the_first_stage_order_and_the_prior_fades_with_rank() -> None:
    logits = np.array([0.1, 3.0, -1.0, 2.0], dtype=np.float32)
    prior = first_stage_prior(4)
    assert prior[0] == 0.0 and all(np.diff(prior) < 0) and (prior[1] - prior[2]) > (prior[2] - prior[3])
    assert np.allclose(first_stage_prior(np.array([1, 3])), [0.0, -np.log(3)])
    assert np.array_equal(combine(logits, prior, 1.0, 0.0), logits)  # an untuned reranker ranks alone
    assert list(np.argsort(-combine(logits, prior, 0.0, 2.0))) == [0, 1, 2, 3]
    assert combine(logits, prior, 0.0, 0.0).tolist() == [0.0] * 4  # ties: search keeps the first stage's order
    corrected = combine(logits, prior, 1.0, 2.0)
    assert int(np.argmax(corrected)) == 1  # a far better logit beats one rank of difference
    assert corrected[3] < corrected[0]  # a smaller one does not beat three


def test_the_prior_weight_fits_how_often_the_first_stage_is_right() -> None:
    """Control flow only: examples whose rankings are made up."""
    from ragapp.retriever_data import Example

    def example(n: int, answer_rank: int) -> Example:
        ranking = [(f"q{n} p{r}", r == answer_rank) for r in range(1, 6)]
        negatives = [text for text, relevant in ranking if not relevant]
        return Example(f"q{n}", f"q{n} p{answer_rank}", negatives, f"test {n}", ranking)

    mostly_first = [example(n, 1) for n in range(18)] + [example(n, 4) for n in range(18, 20)]
    often_wrong = [example(n, 1) for n in range(8)] + [example(n, 1 + n % 5) for n in range(8, 20)]

    def fitted(examples: list[Example]) -> float:
        return fit_prior_weight(_rows(examples, 4, priors=True)["label"])

    assert fitted(mostly_first) > fitted(often_wrong) > 0


def test_the_blend_goes_to_the_reranker_only_as_far_as_it_helps() -> None:
    assert choose_blend({0.0: 0.75, 0.1: 0.75, 0.5: 0.70, 1.0: 0.30}) == 0.0  # a tie: no evidence for it
    assert choose_blend({0.0: 0.75, 0.1: 0.78, 0.2: 0.78, 1.0: 0.60}) == 0.1
    assert choose_blend({0.0: 0.50, 0.9: 0.70, 1.0: 0.70}) == 0.9


def test_mrr_counts_the_first_relevant_passage_in_the_top_ten() -> None:
    scores = [np.array([3.0, 2.0, 1.0]), np.arange(12, 0, -1, dtype=float)]
    relevant = [np.array([False, True, False]), np.array([False] * 11 + [True])]
    assert mrr_at_10(scores, relevant) == pytest.approx((0.5 + 0.0) / 2)


def test_pairs_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "sources": "a.md"}\n{"query": "q2"}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"bad\.jsonl:2: needs `positive`"):
        read_examples(bad)
    bad.write_text('{"query": "q", "positive": "p", "negatives": ["", "x"]}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"bad\.jsonl:1: `negatives` must be a list of non-empty"):
        read_examples(bad)
    bad.write_text('{"question": "q", "sources": []}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r":1: `sources` must be"):
        read_examples(bad)
    bad.write_bytes(b"\x00\x01binary")
    with pytest.raises(TrainingDataError, match="binary"):
        read_examples(bad)


# -- a trained reranker --------------------------------------------------------------------------------


def test_training_writes_a_loadable_reranker_with_its_blend_and_report(trained: tuple[Path, Path, Any]) -> None:
    _, folder, report = trained
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["blend"] in BLENDS and meta["blend"] == report.validation["blend"]
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["examples"] == report.examples and report.examples["validation"] > 0
    assert (folder / "data" / "train.jsonl").read_text().count("\n") == report.examples["train"]
    assert report.steps > 0 and report.model_mb > 10
    v = report.validation
    assert meta["prior_weight"] == v["prior_weight"] > 0  # heading questions: the first stage is mostly right
    assert v["reranked_mrr@10"] >= v["first_stage_mrr@10"]  # held out: the blend chosen never loses to it
    assert not list(folder.parent.glob(f".{folder.name}.partial-*"))  # staged folder renamed into place


def test_training_teaches_the_reranker_the_answers(trained: tuple[Path, Path, Any]) -> None:
    """On the questions it trained on, the answer outranks the hard negatives far more often than before, by the
    reranker's logits alone and, most often, with the first stage's prior as search combines them."""
    _, folder, _ = trained
    rows = [json.loads(line) for line in (folder / "data" / "train.jsonl").read_text().splitlines()]
    trained_reranker = Reranker(str(folder))
    from ragapp.embedding import shipped_model_path

    untrained = Reranker(str(shipped_model_path()))  # the same encoder with a fresh head

    def wins(reranker: Reranker, prior_weight: float = 0.0) -> int:
        won = 0
        for r in rows:
            logits = reranker.score(r["query"], [r["positive"], *r["negatives"]])
            scores = combine(logits, first_stage_prior(np.array(r["ranks"])), 1.0, prior_weight)
            won += int(scores[0] > scores[1:].max())
        return won

    assert wins(trained_reranker) > wins(untrained) + 0.2 * len(rows)
    assert wins(trained_reranker, trained_reranker.meta.prior_weight) >= 0.8 * len(rows)


def alone(folder: Path, dest: Path) -> Path:
    """A copy of the reranker whose order is its own logits' (blend 1, no prior): the trained one may have chosen
    to keep the first stage's order (on heading questions, which that order already answers perfectly)."""
    import shutil

    if not dest.exists():
        shutil.copytree(folder, dest)
        meta = json.loads((dest / META_FILE).read_text())
        (dest / META_FILE).write_text(json.dumps({**meta, "blend": 1.0, "prior_weight": 0.0}))
    return dest


def test_search_reranks_only_the_candidates_and_says_so(trained: tuple[Path, Path, Any]) -> None:
    workspace, trained_folder, report = trained
    query = "How does the keyword index stay consistent?"
    with App(workspace, config={"retrieval": {"reranker": str(trained_folder)}}) as app:
        if report.validation["blend"] == 0.0:  # the blend it chose is applied: 0 keeps the first stage's order
            assert [h.chunk_id for h in app.search(query, 10)] == [
                h.chunk_id for h in app.search(query, 10, rerank=False)
            ]
    folder = alone(trained_folder, workspace.parent / "alone")
    with App(workspace, config={"retrieval": {"reranker": str(folder), "rerank_candidates": 10}}) as app:
        plain = app.search(query, 10, rerank=False)
        reranked = app.search(query, 10)  # on by default once configured
        deeper = app.search(query, 14)
        assert {h.chunk_id for h in reranked} == {h.chunk_id for h in plain}  # reordered, nothing new
        assert [h.chunk_id for h in reranked] != [h.chunk_id for h in plain]
        assert [h.score for h in deeper] == sorted((h.score for h in deeper), reverse=True)
        assert [h.chunk_id for h in deeper[:10]] == [h.chunk_id for h in reranked]
        assert app.status()["reranker"] == {"model": str(folder), "candidates": 10}
        answer = app.ask(query, generation={"max_new_tokens": 8})
        assert [c.chunk_id for c in answer.citations] == [h.chunk_id for h in answer.hits][: len(answer.citations)]
    with App(workspace) as app, pytest.raises(UsageError, match="reranking needs a reranker: set retrieval"):
        app.search(query, rerank=True)


def test_cli_and_http_turn_reranking_on_and_off(trained: tuple[Path, Path, Any]) -> None:
    workspace, trained_folder, _ = trained
    folder = alone(trained_folder, workspace.parent / "alone")
    env = {"RAGAPP_RETRIEVAL_RERANKER": str(folder)}
    query = "How does the keyword index stay consistent?"
    code, on, _ = run(workspace, "search", query, "-k", "5", "--json", env=env)
    code2, off, _ = run(workspace, "search", query, "-k", "5", "--no-rerank", "--json", env=env)
    assert code == code2 == 0
    assert json.loads(on)["hits"] != json.loads(off)["hits"]
    code, _, err = run(workspace, "search", query, "--rerank")
    assert code == 2 and "reranking needs a reranker" in err

    from ragapp.service import Service, create_app

    config = {"retrieval": {"reranker": str(folder)}}
    with App(workspace, config=config) as app:
        expected = [h.chunk_id for h in app.search(query, 5)]
    with TestClient(create_app(Service(workspace, config=config)), raise_server_exceptions=False) as http:
        on_http = http.post("/v1/search", json={"query": query, "k": 5}).json()
        off_http = http.post("/v1/search", json={"query": query, "k": 5, "rerank": False}).json()
        bad = http.post("/v1/search", json={"query": query, "rerank": "sometimes"})
    assert [h["chunk_id"] for h in on_http["hits"]] == expected
    assert [h["chunk_id"] for h in off_http["hits"]] != expected
    assert bad.status_code in (400, 422) and "rerank" in bad.text
    with TestClient(create_app(Service(workspace)), raise_server_exceptions=False) as http:
        refused = http.post("/v1/search", json={"query": query, "rerank": True})
    assert refused.status_code == 400 and "reranking needs a reranker" in refused.text


def test_eval_runs_rerank_or_not_and_record_which(trained: tuple[Path, Path, Any]) -> None:
    workspace, trained_folder, _ = trained
    folder = alone(trained_folder, workspace.parent / "alone-eval")
    env = {"RAGAPP_RETRIEVAL_RERANKER": str(folder)}
    dataset = write_jsonl(
        workspace.parent / "eval.jsonl",
        [{"question": "How does the keyword index stay consistent?", "answer": "It is rebuilt.", "id": "bm25"}],
    )
    common = ("eval", "run", str(dataset), "-k", "2", "--max-new-tokens", "8", "--json")
    code, on, _ = run(workspace, *common, "--name", "on", env=env)
    code2, off, _ = run(workspace, *common, "--name", "off", "--no-rerank", env=env)
    assert code == code2 == 0
    assert json.loads(on)["models"]["reranker"] and json.loads(on)["config"]["retrieval"]["reranker"] == str(folder)
    assert "reranker" not in json.loads(off)["models"] and json.loads(off)["config"]["retrieval"]["reranker"] == ""
    code, _, err = run(workspace, *common, "--name", "refused", "--rerank")
    assert code == 2 and "reranking needs a reranker" in err


def test_a_folder_that_is_not_a_reranker_is_a_config_error(tmp_path: Path, ingested_docs: IngestedDocs) -> None:
    config = {"retrieval": {"reranker": str(tmp_path / "nothing")}}
    with App(ingested_docs.folder, config=config) as app:
        with pytest.raises(ConfigError, match="not a local cross-encoder"):
            app.search("anything")
        assert app.search("anything", rerank=False)  # turning it off gets around it


# -- the training commands ------------------------------------------------------------------------------


def test_cli_training_refuses_bad_input_and_keeps_out_unchanged(tmp_path: Path, ingested_docs: IngestedDocs) -> None:
    ws = ingested_docs.folder
    out = tmp_path / "out"
    code, _, err = run(ws, "reranker", "train", "--out", str(out))
    assert code == 2 and "--beir DIR, --pairs FILE or --synthetic N" in err
    lost = write_jsonl(tmp_path / "lost.jsonl", [{"question": f"q{n}", "sources": "nowhere.md"} for n in range(6)])
    code, _, err = run(ws, "reranker", "train", "--pairs", str(lost), "--out", str(out))
    assert code == 2 and "only 0 usable training example(s)" in err and "6 answer not found" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine", "sources": "asking.md"}\nnot json\n', encoding="utf-8")
    code, _, err = run(ws, "embedder", "train", "--pairs", str(bad), "--out", str(out))
    assert code == 2 and "bad.jsonl:2: not valid JSON" in err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    good = write_jsonl(tmp_path / "good.jsonl", heading_questions(DOCS)[:8])
    code, _, err = run(ws, "reranker", "train", "--pairs", str(good), "--out", str(out))
    assert code == 2 and "already exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, _, err = run(tmp_path / "empty", "reranker", "train", "--synthetic", "4", "--out", str(tmp_path / "o2"))
    assert code != 0 and "ingest" in err


def test_synthetic_questions_are_found_again(ingested_docs: IngestedDocs) -> None:
    """SmolLM2 writes a question per sampled chunk; only questions whose chunk retrieval finds again are kept."""
    with App(ingested_docs.folder, config={"generation": {"max_new_tokens": 48}}) as app:
        kept, stats = synthetic_wanted(app, 4, seed=1, keep_top=5)
        assert stats["chunks"] == 4
        assert stats["questions"] + stats["unusable"] == 4
        assert len(kept) == stats["questions"] - stats["not_found_again"]
        assert kept, stats  # with the instruction after the passage, SmolLM2 writes questions that find their chunk
        for item in kept:
            assert item.query.endswith("?") and item.chunk_id is not None
            assert item.chunk_id in [h.chunk_id for h in app.search(item.query, 5, mode="hybrid", rerank=False)]
        examples, mined = mine(app, kept, negatives=2)
        assert len(examples) == len(kept) and mined["answer_not_found"] == 0
        for example in examples:
            assert example.positive not in example.negatives and len(example.negatives) == 2
            assert sum(relevant for _, relevant in example.ranking) == 1
            # A reranker's negatives are the best-ranked passages of other documents, in the first stage's order.
            ranked = [text for text, _ in example.ranking]
            hardest = example.hardest(2)
            assert len(hardest) == 2 and example.positive not in hardest
            positions = [ranked.index(text) for text in hardest]
            assert positions == sorted(positions) and set(example.negatives) <= set(example.ranked_negatives)


def test_embedder_training_changes_the_vectors_and_a_workspace_can_use_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("retrieval.md", "asking.md"):
        (docs / name).write_text((DOCS / name).read_text(encoding="utf-8"), encoding="utf-8")
    rows = [r for r in heading_questions(DOCS, per_file=8) if r["sources"] in ("retrieval.md", "asking.md")]
    with App(tmp_path / "ws") as app:
        app.ingest([docs])
        examples, _ = mine(app, [Wanted(r["question"], "t", sources=(r["sources"],)) for r in rows], negatives=2)
        report = train_embedder(examples, tmp_path / "embedder", batch_size=8, max_length=128, validation=0.2)
        base = app.embedder.embed(["How are passages fused?"])
    assert report.kind == "embedder" and "trained_mrr@10" in report.validation
    with App(tmp_path / "ws", config={"embedding": {"model": str(tmp_path / "embedder")}}) as app:
        tuned = app.embedder.embed(["How are passages fused?"])
        # The trained model is the one loaded: one model embeds one text the same way every time (cosine 1 to
        # float precision), and these few steps moved it by 7e-5 in float32 on an AVX2-only CPU.
        assert tuned.shape == base.shape and float(tuned[0] @ base[0]) < 1 - 1e-5
        result = app.ingest([docs])
        assert any("embedding model changed" in note for note in result.notes)
        assert result.chunks_embedded == app.status()["chunks"]
        assert app.search("How does hybrid fusion work?", 3)


def tiny_beir(folder: Path, docs: Path) -> Path:
    """A BEIR collection made of ragapp's docs: each section a document, its heading the judged query."""
    folder.mkdir()
    (folder / "qrels").mkdir()
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for path in sorted(docs.glob("*.md")):
        for n, section in enumerate(path.read_text(encoding="utf-8").split("\n## ")[1:3]):
            heading, _, body = section.partition("\n")
            doc_id = f"{path.stem}-{n}"
            corpus.append({"_id": doc_id, "title": path.stem, "text": body.strip()[:1500] or heading})
            queries.append({"_id": f"q-{doc_id}", "text": heading.strip()})
            qrels.append(f"q-{doc_id}\t{doc_id}\t1")
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


def test_cli_trains_on_beir_qrels_and_bench_measures_the_reranker(tmp_path: Path) -> None:
    beir = tiny_beir(tmp_path / "beir", DOCS)
    queries = (beir / "queries.jsonl").read_text().count("\n")
    out = tmp_path / "rr"
    small = ["--epochs", "1", "--batch-size", "8", "--max-length", "48", "--negatives", "2", "--validation", "0.2"]
    code, stdout, err = run(
        tmp_path / "ws", "reranker", "train", "--beir", str(beir), "--out", str(out), *small, "--json"
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["sources"]["beir"] == {"folder": str(beir), "split": "train", "questions": queries}
    assert report["sources"]["mining"]["answer_not_found"] == 0
    assert report["examples"]["train"] + report["examples"]["validation"] == queries
    assert report["out"] == str(out.resolve()) and (out / META_FILE).is_file()
    code, stdout, err = run(
        tmp_path / "ws",
        "bench",
        "retrieval",
        str(beir),
        "--split",
        "train",
        "--mode",
        "hybrid",
        "--rerank",
        str(out),
        "--keep",
        str(tmp_path / "ws"),  # the workspace training ingested the corpus into: nothing is embedded again
        "--json",
    )
    assert code == 0, err
    modes = {m["mode"]: m["metrics"] for m in json.loads(stdout)["modes"]}
    assert set(modes) == {"hybrid", "hybrid+rerank"}
    assert all(0 < m["ndcg@10"] <= 1 for m in modes.values())
