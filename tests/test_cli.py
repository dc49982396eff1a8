"""The `ragapp` command: exit codes, one-line errors, JSON output. Real models, real workspace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from tests.support import DOCS

# The command's flags, messages and exit codes: the store behind them is incidental (its tests run on both).

RAGAPP = [sys.executable, "-m", "ragapp"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_missing_path_exits_2_with_one_line(tmp_path: Path) -> None:
    """A real process: what the user sees on stderr includes anything printed while ragapp starts."""
    proc = subprocess.run(
        [*RAGAPP, "-w", str(tmp_path / "ws"), "ingest", str(tmp_path / "nope")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"Error: path not found: {tmp_path / 'nope'}"]
    assert not (tmp_path / "ws").exists()  # nothing created for a failed command


def test_ask_and_search_on_empty_workspace_exit_1(tmp_path: Path) -> None:
    for command in (["ask", "anything?"], ["search", "anything"]):
        code, _, err = run("-w", str(tmp_path / "ws"), *command)
        assert code == 1
        assert "nothing ingested yet" in err and "ragapp ingest" in err
        assert len(err.strip().splitlines()) == 1


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "ragapp.toml").write_text("[retrieval]\nk = -3\n", encoding="utf-8")
    code, _, err = run("-w", str(ws), "status")
    assert code == 1 and "retrieval.k" in err and "ragapp.toml" in err


def test_bad_env_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGAPP_GENERATION_TOP_P", "2")
    code, _, err = run("-w", str(tmp_path), "config", "show")
    assert code == 1 and "generation.top_p" in err and "RAGAPP_GENERATION_TOP_P" in err


def test_config_show_reports_origins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ragapp.toml").write_text("[retrieval]\nk = 7\n", encoding="utf-8")
    monkeypatch.setenv("RAGAPP_GENERATION_MAX_NEW_TOKENS", "64")
    code, out, _ = run("-w", str(tmp_path), "config", "show", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["retrieval"]["k"] == {"value": 7, "from": str(tmp_path / "ragapp.toml")}
    assert data["generation"]["max_new_tokens"] == {"value": 64, "from": "RAGAPP_GENERATION_MAX_NEW_TOKENS"}
    code, text_out, _ = run("-w", str(tmp_path), "config", "show")
    assert "k = 7  # from" in text_out and "[generation]" in text_out


def test_status_names_the_generation_backend(tmp_path: Path) -> None:
    (tmp_path / "ragapp.toml").write_text('[generation]\nbackend = "openai"\nbase_url = "http://10.0.0.5:8000/v1"\n')
    code, out, _ = run("-w", str(tmp_path), "status")
    assert code == 0 and "Generation: openai: the server's first model (http://10.0.0.5:8000/v1)" in out
    (tmp_path / "ragapp.toml").write_text(
        '[generation]\nbackend = "vllm"\ndtype = "bfloat16"\nadapter = "/a/support"\n'
    )
    code, out, _ = run("-w", str(tmp_path), "status", "--json")
    generation = json.loads(out)["generation"]
    assert (
        generation["backend"] == "vllm" and generation["dtype"] == "bfloat16" and generation["adapter"] == "/a/support"
    )
    assert generation["device"] in ("cpu", "cuda", "none (vLLM is not installed)")


def test_best_of_without_a_reward_model_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run("-w", str(tmp_path / "ws"), "ask", "--best-of", "3", "Anything?")
    assert code == 2 and "--best-of needs a reward model: set reward.model" in err
    monkeypatch.setenv("RAGAPP_REWARD_MODEL", str(tmp_path / "no-such-reward-model"))
    code, out, _ = run("-w", str(tmp_path / "ws"), "status", "--json")
    assert code == 0 and json.loads(out)["reward"]["model"] == str(tmp_path / "no-such-reward-model")
    code, _, err = run("-w", str(tmp_path / "ws"), "ask", "--best-of", "3", "Anything?")
    assert code != 0 and "no-such-reward-model" in err and "Traceback" not in err


def test_status_of_a_missing_workspace_does_not_create_it(tmp_path: Path) -> None:
    code, out, _ = run("-w", str(tmp_path / "ws"), "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["exists"] is False and data["documents"] == 0
    assert not (tmp_path / "ws").exists()


@pytest.mark.slow
def test_ingest_search_status_json(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # five of ragapp's pages: the output is the point, not the corpus's size
    corpus.mkdir()
    for name in ("agents.md", "installation.md", "postgresql.md", "retrieval.md", "workspace.md"):
        shutil.copy(DOCS / name, corpus / name)
    ws = str(tmp_path / "ws")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    (corpus / "diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, out, _ = run("-w", ws, "ingest", str(corpus), "--json")
    assert code == 0  # a bad file does not fail the run
    report = json.loads(out)
    assert report["added"] >= 5 and report["chunks_embedded"] == report["chunks_added"] > 0
    assert sorted(Path(p["source"]).name for p in report["problems"]) == ["broken.pdf", "diagram.png"]

    code, out, _ = run("-w", ws, "ingest", str(corpus))
    assert code == 0 and "0 new" in out and "Not ingested (1):" in out and "broken.pdf" in out
    assert "Skipped 1 file of unsupported type: '.png' ×1" in out  # summarised, not listed one by one

    code, out, _ = run("-w", ws, "search", "configuration file precedence", "-k", "2", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 2
    assert set(hits[0]) >= {"chunk_id", "score", "text", "source", "page", "anchor", "heading", "start", "end"}

    code, out, _ = run("-w", ws, "status", "--json")
    status = json.loads(out)
    assert status["chunks"] == report["chunks_added"] and status["pending"] == 0
    assert status["last_ingest"]["status"] == "completed"
    assert status["generation"]["backend"] == "transformers"


def test_database_url_flag_is_a_setting_not_an_environment_variable(tmp_path: Path) -> None:
    before = os.environ.get("RAGAPP_DATABASE_URL")
    elsewhere = tmp_path / "elsewhere.db"
    url = f"sqlite:///{elsewhere}"
    ws = tmp_path / "ws"
    code, out, _ = run("-w", str(ws), "--database-url", url, "config", "show", "--json")
    assert code == 0 and json.loads(out)["database"]["url"] == {"value": url, "from": "flag"}
    assert os.environ.get("RAGAPP_DATABASE_URL") == before  # the test process's environment is untouched
    code, _, _ = run("-w", str(ws), "--database-url", url, "keys", "list")
    assert code == 0 and elsewhere.is_file() and not (ws / "ragapp.db").exists()  # the store opened there
    code, out, _ = run("-w", str(ws), "--database-url", url, "status")
    assert code == 0 and f"Database:   {url} (from flag)" in out
