"""`evaluate` and `ragapp eval run` end to end: real embedder, real SmolLM2, ragapp's docs as corpus,
and a hand-written question set about them (tests/data/docs_qa.jsonl).

The module runs on both stores (runs and items are stored there); tests about generation alone, not the
store, run on SQLite only. The CLI runs in-process (click's runner, reusing the loaded models) except
where a process is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ragapp.evals import evaluate, load_dataset
from ragapp.evals.judge import Judge
from ragapp.evals.metrics import GROUNDING
from ragapp.evals.runner import answer_metrics
from ragapp.evals.runs import RunStore
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from ragapp import App
from ragapp.attribution import split_sentences
from ragapp.cli import cli
from ragapp.errors import EmptyWorkspace
from ragapp.store import database_url
from tests.support import DocsWorkspaces, IngestedDocs, default_sigint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("module_database")]

QA = Path(__file__).parent / "data" / "docs_qa.jsonl"
SHORT = {"max_new_tokens": 40}


@pytest.fixture(scope="module")
def ingested(
    tmp_path_factory: pytest.TempPathFactory,
    docs_workspaces: DocsWorkspaces,
    module_database: str,
    request: pytest.FixtureRequest,
) -> IngestedDocs:
    """A copy of the session's ingested docs/ workspace, on the module's store."""
    return docs_workspaces.copy(tmp_path_factory.mktemp("evals") / "ws", request)


@pytest.fixture(scope="module")
def workspace(ingested: IngestedDocs) -> Path:
    return ingested.folder


def reader(ws: Path) -> Engine:
    """An engine reading the workspace's store as a concurrent process does. One per polling loop: a new engine
    per poll costs a connection each time (and, on PostgreSQL, a server process forked for it)."""
    url = os.environ.get("RAGAPP_DATABASE_URL") or f"sqlite:///file:{ws / 'ragapp.db'}?mode=ro&uri=true"
    return create_engine(database_url(url))


def saved_items(engine: Engine, run_prefix: str, old_runs: set[int]) -> int:
    """Items saved so far for new runs whose name starts with `run_prefix`, as a concurrent reader sees them."""
    try:
        with engine.connect() as connection:
            query = text(
                "SELECT eval_runs.id, count(*) FROM eval_items JOIN eval_runs ON eval_runs.id = run_id "
                "WHERE name LIKE :p GROUP BY eval_runs.id"
            )
            rows = connection.execute(query, {"p": run_prefix + "%"}).all()
        return sum(n for run_id, n in rows if run_id not in old_runs)
    except (OperationalError, ProgrammingError):
        return 0


class CannedJudge(Judge):
    """A FAKE judge without a server: every answer makes one claim, and the passages support it. It checks
    that `evaluate` asks the judge and stores its work, not what a judge would say."""

    def __init__(self) -> None:
        super().__init__("http://judge.invalid/v1", model="canned")
        self.prompts: list[str] = []

    def complete(self, prompt: str, max_tokens: int) -> str:
        self.prompts.append(prompt)
        return '["The answer says something."]' if prompt.startswith("Question:") else '{"verdict": "yes"}'


def test_evaluate_answers_scores_and_stores_every_question(workspace: Path, ingested: IngestedDocs) -> None:
    app = App(workspace)
    judge = CannedJudge()
    # 2 passages: half the prompt
    run = evaluate(app, QA, name="docs", k=2, generation=SHORT, batch_size=3, judge=judge)
    assert run.status == "completed" and run.saved == run.total == 6 and not run.problems
    assert [i.item_id for i in run.items] == ["passages", "hidden", "stop", "env", "workspace", "pdf"]
    for item in run.items:
        assert item.error is None and item.prediction
        # Stored scores are the metric libraries' values for the stored answer.
        assert {k: item.metrics[k] for k in answer_metrics("", "x")} == pytest.approx(
            answer_metrics(item.prediction, item.reference)
        )
        assert 1 < item.metrics["perplexity"] < 1e4
        assert {"hit@2", "recall@2", "mrr@2", "ndcg@2"} <= item.metrics.keys()
        assert item.citations and all(c["source"].startswith(str(ingested.corpus)) for c in item.citations)
        t = item.timings
        assert t["latency_s"] >= t["generate_s"] > 0 and t["prompt_tokens"] > 50 and 0 < t["completion_tokens"] <= 40
        assert t["reference_tokens"] > 5
    a = run.aggregates
    assert a["hit@2"] >= 0.5  # retrieval finds the right page for most of these plain questions
    assert 0 < a["rougeL"] < 1 and 0 <= a["bleu"] < 1 and a["latency_p95_s"] >= a["latency_p50_s"]
    assert run.config["retrieval"]["k"] == 2 and run.config["generation"]["max_new_tokens"] == 40
    assert run.models["generator"] and run.models["embedding"] and run.models["judge"] == "canned"
    again = RunStore(app.open_store()).load("docs")
    assert again.to_dict() == run.to_dict()
    _check_grounding(run, judge)


def _check_grounding(run: Any, judge: CannedJudge) -> None:
    """The groundedness metrics exist, lie in 0..1, and agree with the sentences stored with each item."""
    a = run.aggregates
    for name in (*GROUNDING, "faithfulness"):
        assert a[name] is None or 0 <= a[name] <= 1, name  # None only if every answer abstained
    assert a["abstention_rate"] is not None and a["judge_unparsed"] == 0 and a["judge_errors"] == 0
    answered = [i for i in run.items if not i.abstained]
    for item in run.items:
        supported = [s for s in item.sentences if s["citations"]]
        if item.abstained:
            assert item.sentences == [] and item.metrics["groundedness"] is None and item.judge is None
            assert not any(c["cited"] for c in item.citations) and item.metrics["abstention_rate"] == 1.0
            continue
        assert item.sentences, item.prediction
        assert item.metrics["groundedness"] == len(supported) / len(item.sentences)
        assert {c["n"] for c in item.citations if c["cited"]} == {n for s in supported for n in s["citations"]}
        assert 0 <= item.metrics["answer_relevance"] <= 1 and item.metrics["faithfulness"] == 1.0
    if answered:
        mean = sum(i.metrics["groundedness"] for i in answered) / len(answered)
        assert a["groundedness"] == pytest.approx(mean)
        assert a["answer_relevance"] > 0.2  # the answers are about the questions
    assert a["abstention_rate"] == pytest.approx(1 - len(answered) / len(run.items))
    assert len(judge.prompts) == 2 * len(answered)  # one claims list and one verdict per answer


def _copied(app: App, question: str) -> str:
    """The first two sentences of the best passage for `question`, word for word."""
    text = app.search(question)[0].text
    spans = split_sentences(text)
    return text[spans[0][0] : spans[min(1, len(spans) - 1)][1]]


def test_eval_score_copied_passage_is_grounded_and_made_up_answer_is_not(workspace: Path, tmp_path: Path) -> None:
    """`eval score` attributes given answers to the workspace's passages, as `ask` attributes its own."""
    question = "Does ragapp ingest skip hidden files?"
    copied = _copied(App(workspace), question)
    made_up = "Bananas are grown in Ecuador and exported to Norway."
    rows = [
        {"id": "copied", "question": question, "prediction": copied, "reference": copied, "sources": ["ingesting.md"]},
        {"id": "made-up", "question": question, "prediction": made_up, "reference": copied},
        {
            "id": "abstained",
            "question": question,
            "prediction": "I could not find this in the documents.",
            "reference": copied,
        },
        {"id": "no-question", "prediction": copied, "reference": copied},
    ]
    runs = {}
    for name, keep in (("copied", {"copied", "abstained", "no-question"}), ("made-up", {"made-up"})):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in keep))
        args = ["-w", str(workspace), "eval", "score", str(data), "--name", f"score-{name}"]
        result = CliRunner().invoke(cli, [*args, "--fail-under", "groundedness=0.5"])
        assert result.exit_code == (0 if name == "copied" else 1), result.output
        runs[name] = RunStore(App(workspace).open_store()).load(f"score-{name}")
    items = {i.item_id: i for r in runs.values() for i in r.items}
    assert items["copied"].metrics["groundedness"] == 1.0 and items["copied"].sentences
    assert items["copied"].metrics["citation_precision"] == items["copied"].metrics["citation_recall"] == 1.0
    assert items["copied"].metrics["answer_relevance"] > 0.3
    assert items["made-up"].metrics["groundedness"] == 0.0 and items["made-up"].sentences
    assert not any(c["cited"] for c in items["made-up"].citations) and items["made-up"].citations
    assert items["made-up"].metrics["citation_precision"] is None  # no gold sources and nothing cited
    assert items["abstained"].abstained and items["abstained"].metrics["groundedness"] is None
    assert items["abstained"].metrics["abstention_rate"] == 1.0
    assert "groundedness" not in items["no-question"].metrics  # nothing to retrieve passages for
    assert runs["copied"].aggregates["groundedness"] == 1.0 and runs["made-up"].aggregates["groundedness"] == 0.0
    assert runs["copied"].aggregates["abstention_rate"] == 0.5
    assert runs["copied"].models["embedding"] and "retrieval" in runs["copied"].config


def sqlite_half_only(module_database: str, why: str) -> None:
    """Skip the PostgreSQL run of a test whose subject is not the store."""
    if module_database != "sqlite":
        pytest.skip(f"not about the store: {why}")


def test_question_that_cannot_be_answered_is_an_item_error(
    workspace: Path, tmp_path: Path, module_database: str
) -> None:
    """A question too long for the model's window fails alone; the rest of its batch is answered."""
    sqlite_half_only(module_database, "a prompt too long for the model's window")
    qa = tmp_path / "qa.jsonl"
    rows = [json.loads(line) for line in QA.read_text().splitlines()[:2]]
    rows.insert(1, {"id": "huge", "question": "why " * 9000, "answer": "no"})
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = evaluate(App(workspace), qa, name="with-error", generation=SHORT, batch_size=3)
    errors = {i.item_id: i.error for i in run.items}
    assert errors["passages"] is None and errors["hidden"] is None
    assert errors["huge"] and "exceed" in errors["huge"]
    assert run.status == "completed" and run.aggregates["rougeL"] is not None


@pytest.mark.usefixtures("fresh_database")
def test_empty_workspace_fails_before_creating_a_run(tmp_path: Path) -> None:
    app = App(tmp_path / "ws")
    app.open_store(create=True)
    with pytest.raises(EmptyWorkspace):
        evaluate(app, QA)
    assert RunStore(app.open_store()).list() == []


KILLED_RUN_QUESTIONS = 4  # the run is killed after 2 saved items; 2 more are left for the resumed run


def _args(ws: Path, dataset: Path, *args: str) -> list[str]:
    """One passage per prompt: what is checked is where a run stops and resumes, and with four passages
    each killed-run test took 51-56 s instead of 26-32 s on one core."""
    return ["-w", str(ws), "eval", "run", str(dataset), "-k", "1", "--max-new-tokens", "24", *args]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGKILL, "running"), (signal.SIGINT, "interrupted")])
def test_killed_run_continues_where_it_stopped(
    workspace: Path, tmp_path: Path, sig: int, status: str, module_database: str
) -> None:
    """The killed `eval run` is a process of its own; the resuming one runs in-process."""
    import shutil

    if sig == signal.SIGINT:
        # Ctrl-C only changes which status the run is left in; what a store must survive is the SIGKILL.
        sqlite_half_only(module_database, "SIGINT's status is written as SIGKILL's run is, by the same code")

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    dataset = tmp_path / QA.name  # the same name: runs are named after the file ("docs_qa-...")
    dataset.write_text("".join(QA.read_text().splitlines(keepends=True)[:KILLED_RUN_QUESTIONS]))
    before = RunStore(App(ws).open_store()).list()
    old_runs = {r.id for r in before}  # on PostgreSQL the module's database holds earlier tests' runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragapp", *_args(ws, dataset, "--batch-size", "1")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # noqa: PLW1509 (it only resets one signal handler, which is fork-safe)
    )
    deadline = time.monotonic() + 300
    engine = reader(ws)
    try:
        while saved_items(engine, "docs_qa", old_runs) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "eval run did not save 2 items in time"
            time.sleep(0.05)
    finally:
        engine.dispose()
    proc.send_signal(sig)
    proc.wait(timeout=120)
    app = App(ws)
    runs = RunStore(app.open_store())
    (stopped,) = [r for r in runs.list() if r.name.startswith("docs_qa") and r.id not in old_runs]
    assert stopped.status == status and 2 <= stopped.saved < KILLED_RUN_QUESTIONS
    first = {i.position: i.prediction for i in runs.load(stopped.id).items}

    resumed = CliRunner().invoke(cli, _args(ws, dataset, "--json"))
    assert resumed.exit_code == 0, resumed.output
    done = json.loads(resumed.stdout)
    assert done["name"] == stopped.name and done["id"] == stopped.id  # the same run, continued
    assert done["status"] == "completed" and len(done["items"]) == KILLED_RUN_QUESTIONS
    assert sorted(i["position"] for i in done["items"]) == list(range(1, KILLED_RUN_QUESTIONS + 1))
    assert {i["position"]: i["prediction"] for i in done["items"] if i["position"] in first} == first
    assert [r.name for r in runs.list()].count(stopped.name) == 1 and len(runs.list()) == len(before) + 1


def test_eval_run_gate_and_settings_change_make_a_new_run(workspace: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    qa = tmp_path / "two.jsonl"
    qa.write_text("".join(QA.read_text().splitlines(keepends=True)[:2]))
    base = ["-w", str(ws), "eval", "run", str(qa), "--max-new-tokens", "16"]
    ok = CliRunner().invoke(cli, [*base, "-k", "1", "--name", "a", "--fail-under", "rougeL=0.0"])
    assert ok.exit_code == 0, ok.output
    assert "Quality gate passed." in ok.stdout and "hit@1" in ok.stdout
    bad = CliRunner().invoke(cli, [*base, "-k", "2", "--fail-under", "rougeL=0.99"])
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("Error: quality gate failed: rougeL = ")
    names = [r.name for r in RunStore(App(ws).open_store()).list()]
    assert names[:2] == ["two-1", "a"]  # other settings (k=2): a new run, not a continuation of "a"
    assert load_dataset(qa).examples[0].item_id == "passages"
