"""Asking questions end to end with the real shipped models (MiniLM + SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp import App
from ragapp.cli import cli
from tests.support import DocsWorkspaces

# Generation over retrieved passages: which store held them does not matter here (test_search.py runs both).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, docs_workspaces: DocsWorkspaces
) -> Path:
    """A copy of the session's SQLite workspace with docs/ ingested, shared by this module's tests."""
    ws = tmp_path_factory.mktemp("ask") / "ws"
    docs_workspaces.copy(ws, request)
    return ws


def test_ask_answers_with_numbered_citations(workspace: Path) -> None:
    answer = App(workspace).ask(
        "How do I remove documents whose files were deleted?", generation={"max_new_tokens": 48}
    )
    assert answer.answer.strip()
    assert [c.n for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert any("--sync" in c.text for c in answer.citations)  # retrieval found the passage that answers
    assert all(Path(c.source).suffix == ".md" and c.chunk_id > 0 for c in answer.citations)
    assert answer.model == "SmolLM2-135M-Instruct"
    assert answer.timings["generate_s"] > 0 and answer.timings["prompt_tokens"] > 50


def test_streaming_pieces_make_up_the_answer(workspace: Path) -> None:
    pieces: list[str] = []
    app = App(workspace, config={"answer": {"abstain": False}})  # the generated text itself, however unsupported
    streamed = app.ask("What file formats can be ingested?", generation={"max_new_tokens": 24}, on_token=pieces.append)
    plain = app.ask("What file formats can be ingested?", generation={"max_new_tokens": 24})
    assert len(pieces) > 1
    assert "".join(pieces).strip() == streamed.answer == plain.answer  # greedy: same text either way


def test_context_window_is_respected(workspace: Path) -> None:
    app = App(workspace, config={"generation": {"context_window": 400}})
    answer = app.ask("What is in the workspace folder?", k=8, generation={"max_new_tokens": 16})
    assert answer.timings["prompt_tokens"] <= 400 - 16
    assert 1 <= len(answer.citations) < 8  # lower-ranked passages were dropped to fit


def test_stop_strings_and_sampling_seed(workspace: Path) -> None:
    app = App(workspace, config={"answer": {"abstain": False}})  # the generated text itself, however unsupported
    sampled = [
        app.ask("What is ragapp?", generation={"max_new_tokens": 16, "temperature": 0.9, "seed": 5}).answer
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    stopped = app.ask("What is ragapp?", generation={"max_new_tokens": 32, "stop": ["."]}).answer
    assert "." not in stopped


def test_few_shot_template_from_config(workspace: Path) -> None:
    (workspace / "ragapp.toml").write_text(
        '[[prompt.examples]]\nquestion = "What colour is the sky?"\ncontext = "[1] (sky.md)\\nThe sky is blue."\n'
        'answer = "The sky is blue [1]."\n',
        encoding="utf-8",
    )
    try:
        app = App(workspace)
        from ragapp.prompt import build_messages

        messages = build_messages(app.config.prompt, "q", [])
        assert messages[2] == {"role": "assistant", "content": "The sky is blue [1]."}
        answer = app.ask("Which command shows the effective configuration?", generation={"max_new_tokens": 32})
        assert answer.answer
    finally:
        (workspace / "ragapp.toml").unlink()


def test_cli_ask_json_shape(workspace: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["-w", str(workspace), "ask", "How do I see the effective configuration?", "--max-new-tokens", "32", "--json"],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data["answer"], str) and data["answer"]
    assert data["citations"] and set(data["citations"][0]) >= {
        "n",
        "source",
        "page",
        "anchor",
        "chunk_id",
        "score",
        "cited",
    }


def test_cli_ask_streams_then_lists_sources(workspace: Path) -> None:
    result = CliRunner().invoke(cli, ["-w", str(workspace), "ask", "What is ragapp?", "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.stderr
    assert "Sources:" in result.stdout and "[1]" in result.stdout.split("Sources:")[1]
