"""The agent end to end with the shipped SmolLM2-135M, through the text protocol: real tools, real model.

SQLite only: what is tested is the model's choice of tool and the tool's result, which no store changes
(the store halves of search_documents and sql_query are tested in test_agent.py and test_tools_sql.py).
The CLI runs in-process (click's runner), so it reuses the models the first test loaded.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.app import App
from ragapp.cli import cli

pytestmark = pytest.mark.slow


def test_the_shipped_model_picks_the_calculator_and_answers_with_its_result(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "shop.md").write_text("# Opening hours\n\nThe shop opens at nine and closes at six.\n")
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
        c.execute("INSERT INTO customers (name, city) VALUES ('Ada', 'Paris')")
    app = App(tmp_path / "ws", config={"agent": {"database": f"sqlite:///{db}"}})
    app.ingest([folder])

    result = app.agent("What is 1234 * 5678?")

    offered = [s.tool for s in result.tool_calls]
    assert result.protocol == "react" and result.model == "SmolLM2-135M-Instruct"
    assert offered and offered[0] == "calculator"  # of search_documents, sql_query and calculator
    expression = result.tool_calls[0].args["expression"]
    assert "1234" in expression and "5678" in expression
    observation = next(s for s in result.steps if s.kind == "observation")
    assert observation.content == "7006652" and not observation.error
    assert result.finished and "7006652" in result.answer  # a 135M model does not multiply this by itself


def test_ragapp_agent_trace_shows_the_tool_call_and_its_result(tmp_path: Path) -> None:
    run = CliRunner().invoke(cli, ["--workspace", str(tmp_path / "ws"), "agent", "What is 1234 * 5678?", "--trace"])
    assert run.exit_code == 0, run.output
    assert "→ calculator: 1234 * 5678" in run.stderr
    assert "← calculator: 7006652" in run.stderr
    assert "7006652" in run.stdout
    assert "react protocol; 2 model calls, 1 tool calls" in run.stderr
