"""End to end, real model, SQLite workspace: a deleted or damaged index.faiss, and an ingest killed with -9
(issue 21: defect 6 and the killed ingest `status` showed as running). About the workspace's own files,
so SQLite only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from ragapp.cli import cli
from tests.support import DOCS

pytestmark = pytest.mark.slow


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("workspace.md",):
        shutil.copy(DOCS / name, folder / name)
    return folder


def test_a_deleted_or_damaged_index_is_reported_then_rebuilt_by_the_next_ingest(
    tmp_path: Path, small_corpus: Path
) -> None:
    ws = tmp_path / "ws"
    index = ws / "index.faiss"
    code, out, _ = run("-w", str(ws), "ingest", str(small_corpus), "--json")
    chunks = json.loads(out)["chunks_added"]
    assert code == 0 and chunks > 5

    for damage in ("deleted", "truncated"):
        if damage == "deleted":
            index.unlink()
        else:
            os.truncate(index, 100)
        for mode in ("dense", "hybrid"):  # not "No passages found." with exit 0, nor BM25 alone in silence
            code, out, err = run("-w", str(ws), "search", "rebuild the vector index", "--mode", mode)
            assert code == 1 and str(index) in err and "ragapp ingest PATH" in err, (damage, mode, out, err)
            assert "No passages found" not in out
        code, out, _ = run("-w", str(ws), "search", "rebuild the vector index", "--mode", "bm25", "-k", "3")
        assert code == 0 and out.startswith("[1]")  # keywords need no vectors
        code, out, _ = run("-w", str(ws), "status", "--json")
        status = json.loads(out)
        assert status["pending"] == chunks
        assert status["index"]["state"] == ("missing" if damage == "deleted" else "unreadable")
        assert run("-w", str(ws), "doctor")[0] == 1

        code, out, _ = run("-w", str(ws), "ingest", str(small_corpus), "--json")
        report = json.loads(out)
        assert code == 0 and report["chunks_embedded"] == chunks and report["notes"]  # rebuilt from SQL, said so
        code, out, _ = run("-w", str(ws), "search", "rebuild the vector index", "--mode", "dense", "-k", "3", "--json")
        assert code == 0 and len(json.loads(out)["hits"]) == 3
        code, out, _ = run("-w", str(ws), "status", "--json")
        assert json.loads(out)["pending"] == 0 and json.loads(out)["index"]["state"] == "ok"
        assert run("-w", str(ws), "doctor")[0] == 0


def _run_status(ws: Path) -> str | None:
    db = ws / "ragapp.db"
    if not db.exists():
        return None
    engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT status FROM ingest_runs ORDER BY id DESC LIMIT 1")).first()
            return row[0] if row else None
    except DBAPIError:  # the schema is being created
        return None
    finally:
        engine.dispose()


def test_an_ingest_killed_with_sigkill_shows_as_interrupted(tmp_path: Path, small_corpus: Path) -> None:
    ws = tmp_path / "ws"
    child = subprocess.Popen(
        [sys.executable, "-m", "ragapp", "-w", str(ws), "ingest", str(small_corpus)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while _run_status(ws) != "running":
            assert child.poll() is None and time.monotonic() < deadline, "the ingest ended before it could be killed"
            time.sleep(0.05)
        _, out, _ = run("-w", str(ws), "status", "--json")
        assert json.loads(out)["last_ingest"]["status"] == "running"  # it holds the lock: really running
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _run_status(ws) == "running"  # what the killed process left in SQL
    _, out, _ = run("-w", str(ws), "status", "--json")
    assert json.loads(out)["last_ingest"]["status"] == "interrupted"
    _, out, _ = run("-w", str(ws), "doctor", "--json")
    assert any(f["check"] == "ingest runs" and f["level"] == "warning" for f in json.loads(out)["findings"])

    assert run("-w", str(ws), "ingest", str(small_corpus))[0] == 0  # the next ingest records it too
    engine = create_engine(f"sqlite:///{ws / 'ragapp.db'}")
    with engine.connect() as connection:
        statuses = [r[0] for r in connection.execute(text("SELECT status FROM ingest_runs ORDER BY id"))]
    engine.dispose()
    assert statuses == ["interrupted", "completed"]
