"""`ragapp eval score | list | show | compare | report | delete` and the CI gates' exit codes.

`eval score` needs no model, so these run in-process and fast; the answers are real sentences
written for the test, scored by the real metric libraries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from ragapp.evals.runner import answer_metrics

from ragapp.cli import cli

pytestmark = pytest.mark.usefixtures("database")

ROWS = [
    ("What is the capital of France?", "The capital of France is Paris.", "Paris is the capital of France."),
    ("What colour is the sky?", "The sky is blue on a clear day.", "On a clear day the sky is blue."),
    ("How many legs has a spider?", "A spider has eight legs.", "Spiders have eight legs."),
    ("What do bees make?", "Bees make honey and wax.", "Bees produce honey."),
    ("Where do penguins live?", "Most penguins live in the southern hemisphere.", "Penguins live in the south."),
]


def write(path: Path, worse: bool = False) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, (q, ref, pred) in enumerate(ROWS):
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": q,
                        "reference": ref,
                        "prediction": "I do not know." if worse and i < 3 else pred,
                    }
                )
                + "\n"
            )
        f.write("{broken\n")
    return path


def invoke(ws: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


def test_score_stores_a_run_with_library_values_and_reports_bad_lines(ws: Path, tmp_path: Path) -> None:
    code, out, err = invoke(ws, "eval", "score", str(write(tmp_path / "p.jsonl")), "--name", "base", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["name"] == "base" and run["status"] == "completed" and run["kind"] == "score"
    assert run["problems"] == [
        {"line": 6, "reason": "invalid JSON: Expecting property name enclosed in double quotes (column 2)"}
    ]
    first = run["items"][0]
    assert first["metrics"] == pytest.approx(answer_metrics(ROWS[0][2], ROWS[0][1]))
    mean_rouge = sum(answer_metrics(p, r)["rougeL"] for _, r, p in ROWS) / len(ROWS)
    assert run["aggregates"]["rougeL"] == pytest.approx(mean_rouge)


def test_gates_exit_codes_and_messages(ws: Path, tmp_path: Path) -> None:
    good, bad = write(tmp_path / "good.jsonl"), write(tmp_path / "bad.jsonl", worse=True)
    code, out, _ = invoke(ws, "eval", "score", str(good), "--name", "base", "--fail-under", "rougeL=0.2,bleu=0.01")
    assert code == 0 and "Quality gate passed." in out
    code, out, err = invoke(ws, "eval", "score", str(bad), "--name", "worse", "--fail-under", "rougeL=0.9")
    assert code == 1
    assert "quality gate failed: rougeL = " in err and "below the required 0.9" in err
    assert "rougeL" in out  # the numbers are printed before the verdict
    code, _, err = invoke(ws, "eval", "show", "worse", "--max-drop-vs", "base", "rougeL=0.05")
    assert code == 1 and "rougeL dropped by" in err and "vs run 'base'" in err
    code, out, _ = invoke(ws, "eval", "show", "base", "--max-drop-vs", "worse", "rougeL=0.05")
    assert code == 0 and "Quality gate passed." in out  # base is better than worse: no drop
    # A typo in the metric, the option or the baseline run is a usage error (2), not a failed gate.
    assert invoke(ws, "eval", "show", "base", "--fail-under", "rougel=0.1")[0] == 2
    assert invoke(ws, "eval", "show", "base", "--fail-under", "rougeL")[0] == 2
    code, _, err = invoke(ws, "eval", "show", "base", "--max-drop-vs", "nope", "rougeL=0.1")
    assert code == 2 and "no evaluation run 'nope'" in err


def test_list_show_compare_delete(ws: Path, tmp_path: Path) -> None:
    invoke(ws, "eval", "score", str(write(tmp_path / "a.jsonl")), "--name", "a")
    invoke(ws, "eval", "score", str(write(tmp_path / "b.jsonl", worse=True)), "--name", "b")
    code, out, _ = invoke(ws, "eval", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["id", "name", "status", "items", "started"]
    assert lines[2].split()[1] == "b" and lines[3].split()[1] == "a"  # newest first
    code, out, _ = invoke(ws, "eval", "show", "1", "--items")  # by id
    assert code == 0 and "Run a (#1, score): completed, 5/5 answered" in out and "capital of France" in out
    code, out, _ = invoke(ws, "eval", "compare", "a", "b", "--json")
    c = json.loads(out)
    rouge = next(m for m in c["metrics"] if m["name"] == "rougeL")
    assert c["paired"] == 5 and rouge["delta"] < 0 and rouge["low"] <= rouge["delta"] <= rouge["high"]
    assert {ch["item_id"] for ch in c["changed"]} == {"q0", "q1", "q2"}
    code, out, _ = invoke(ws, "eval", "compare", "a", "b")
    assert code == 0 and "95% CI" in out and "Most changed by rougeL" in out
    assert invoke(ws, "eval", "delete", "a")[0] == 0
    code, _, err = invoke(ws, "eval", "show", "a")
    assert code == 2 and "no evaluation run 'a'" in err


def test_name_clash_and_missing_workspace(ws: Path, tmp_path: Path) -> None:
    code, _, err = invoke(ws, "eval", "list")
    assert code == 2 and "no workspace" in err
    p = write(tmp_path / "p.jsonl")
    assert invoke(ws, "eval", "score", str(p), "--name", "x")[0] == 0
    code, _, err = invoke(ws, "eval", "score", str(p), "--name", "x")
    assert code == 2 and "already complete" in err
    code, out, _ = invoke(ws, "eval", "score", str(p))
    assert code == 0 and "Run p-1 " in out  # default name: the file's stem and a number
    code, _, err = invoke(ws, "eval", "score", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "dataset not found" in err


def test_report_is_written(ws: Path, tmp_path: Path) -> None:
    invoke(ws, "eval", "score", str(write(tmp_path / "p.jsonl")), "--name", "r")
    code, _, err = invoke(ws, "eval", "report", "r", "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "capital of France" in html and "rougeL" in html


def test_unfinished_run_is_continued_unless_another_process_holds_it(ws: Path, tmp_path: Path) -> None:
    """A run left 'running' by a killed process is continued; one whose lock is held is not touched."""
    import fcntl
    import os

    from ragapp.evals.dataset import load_dataset
    from ragapp.evals.runner import lock_path
    from ragapp.evals.runs import RunStore

    from ragapp import App

    p = write(tmp_path / "p.jsonl")
    ds = load_dataset(p, need_prediction=True)
    runs = RunStore(App(ws).open_store(create=True))
    orphan = runs.create("orphan", "score", str(ds.path), ds.fingerprint, 5, {"rouge_stem": True}, {}, [])
    code, out, _ = invoke(ws, "eval", "score", str(p))
    assert code == 0 and "Run orphan " in out and "5/5 answered" in out  # continued, not a new run
    assert not lock_path(ws, orphan).exists()  # removed once complete

    held = runs.create("held", "score", str(ds.path), ds.fingerprint, 5, {"rouge_stem": True}, {}, [])
    fd = os.open(lock_path(ws, held), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a live `eval score` process would
    try:
        code, out, _ = invoke(ws, "eval", "score", str(p))
        assert code == 0 and "Run p-1 " in out  # a new run instead of the busy one
        code, _, err = invoke(ws, "eval", "score", str(p), "--name", "held")
        assert code == 2 and "being answered by another process" in err
    finally:
        os.close(fd)
    assert runs.load("held").saved == 0


def test_python_api_is_reachable_as_ragapp_evals() -> None:
    import ragapp.evals
    from ragapp.evals import compare, evaluate, score_predictions, write_report

    assert {evaluate.__module__, score_predictions.__module__, compare.__module__, write_report.__module__} == {
        "ragapp.evals.runner",
        "ragapp.evals.comparison",
        "ragapp.evals.report",
    }
    with pytest.raises(AttributeError):
        ragapp.evals.no_such_name  # noqa: B018


def test_score_needs_only_prediction_and_reference(ws: Path, tmp_path: Path) -> None:
    """`eval score`'s help says `prediction` and `reference` are enough; rows without a question are
    scored, stored with an empty question and shown as such."""
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"prediction": p, "reference": r}) + "\n" for _, r, p in ROWS), encoding="utf-8")
    code, out, err = invoke(ws, "eval", "score", str(bare), "--name", "bare", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["total"] == len(ROWS) and run["problems"] == []
    assert [i["question"] for i in run["items"]] == [""] * len(ROWS)
    first = run["items"][0]["metrics"]["rougeL"]
    assert first == pytest.approx(answer_metrics(ROWS[0][2], ROWS[0][1], True)["rougeL"])
    code, out, _ = invoke(ws, "eval", "show", "bare", "--items")
    assert code == 0 and out.count("(no question)") == len(ROWS)
    code, _, _ = invoke(ws, "eval", "report", "bare", "--out", str(tmp_path / "bare.html"))
    assert code == 0 and "(no question)" in (tmp_path / "bare.html").read_text(encoding="utf-8")


def _cli_metrics(out: str) -> dict[str, str]:
    """The `metric  value` table of `eval show`."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split() == ["metric", "value"]) + 2
    pairs = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines[start:] if line.strip())
    return {name: value for name, value in pairs}


def test_cli_and_html_report_show_the_same_numbers(ws: Path, tmp_path: Path) -> None:
    assert invoke(ws, "eval", "score", str(write(tmp_path / "p.jsonl")), "--name", "base")[0] == 0
    code, out, _ = invoke(ws, "eval", "show", "base")
    assert code == 0
    shown = _cli_metrics(out)
    assert {"rougeL", "bleu", "bleu_bp"} <= set(shown)
    code, _, _ = invoke(ws, "eval", "report", "base", "--out", str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    reported = dict(re.findall(r"<tr><td>([^<]+)</td><td class='num'>([^<]+)</td>", html))
    assert shown == {name: reported.get(name) for name in shown}


def test_runs_stored_before_groundedness_still_load_show_and_report(ws: Path, tmp_path: Path) -> None:
    """A workspace at schema version 4 (items without sentences, abstained, judge) is migrated on open;
    its runs read back with no sentences, not abstained, not judged."""
    import os

    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from ragapp.store import MIGRATIONS, database_url, migrate

    ws.mkdir()
    engine = create_engine(database_url(os.environ.get("RAGAPP_DATABASE_URL") or f"sqlite:///{ws / 'ragapp.db'}"))
    with Session(engine) as s:
        migrate(s, {v: MIGRATIONS[v] for v in (1, 2, 3, 4)})
        for column in ("sentences", "abstained", "judge"):  # version 4 created eval_items without them
            s.execute(text(f"ALTER TABLE eval_items DROP COLUMN {column}"))
        s.execute(
            text(
                "INSERT INTO eval_runs (id, name, kind, status, dataset, dataset_hash, started_at, seconds, config, "
                "models, aggregates, problems, total) VALUES (1, 'old', 'score', 'completed', 'p.jsonl', 'x', "
                """CURRENT_TIMESTAMP, 1.0, '{}', '{}', '{"rougeL": 0.5}', '[]', 1)"""
            )
        )
        s.execute(
            text(
                "INSERT INTO eval_items (run_id, position, item_id, question, reference, prediction, "
                "expected_sources, citations, metrics, timings) VALUES (1, 1, 'q0', 'Why?', 'Because.', "
                """'Because.', '[]', '[]', '{"rougeL": 0.5}', '{}')"""
            )
        )
        s.commit()
    engine.dispose()
    code, out, err = invoke(ws, "eval", "show", "old", "--items", "--json")
    assert code == 0, err
    (item,) = json.loads(out)["items"]
    assert (item["sentences"], item["abstained"], item["judge"], item["metrics"]) == ([], False, None, {"rougeL": 0.5})
    code, _, err = invoke(ws, "eval", "report", "old", "--out", str(tmp_path / "old.html"))
    assert code == 0, err
    assert 'class="badge abstained"' not in (tmp_path / "old.html").read_text(encoding="utf-8")


def test_judge_options_are_checked_before_scoring(ws: Path, tmp_path: Path) -> None:
    p = write(tmp_path / "p.jsonl")
    code, _, err = invoke(ws, "eval", "score", str(p), "--judge-model", "m")
    assert code == 2 and "--judge-model needs --judge-url" in err
    code, _, err = invoke(ws, "eval", "score", str(p), "--judge-url", "http://127.0.0.1:9/v1")  # nothing listens
    assert code == 2 and "--judge-url: cannot list the judge's models" in err
    assert invoke(ws, "eval", "list")[0] == 2  # no run, not even a workspace, was made
