"""`ragapp doctor`, and what `status` and every command say about a damaged or half-repaired workspace
(issue 21: defects 6, 9 and the killed ingest shown as running).

The workspaces here are real (SQLite file or PostgreSQL, FAISS file or pgvector, BM25 folder) but their
vectors are random numbers of dimension 8 instead of embeddings: what is checked is bookkeeping, which
needs no model. The end-to-end case with the real model is in test_index_repair_e2e.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ragapp.connectors import Document, Section
from sqlalchemy import text

from ragapp import App
from ragapp.chunking import Chunk
from ragapp.cli import cli
from ragapp.store import IngestRun
from ragapp.vector_index import PgVectorWorkspaceIndex, WorkspaceIndex

DIM = 8
N_CHUNKS = 5


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def small_workspace(ws: Path) -> None:
    """A workspace as an ingest leaves it: one document, its chunks, their vectors, the keyword index."""
    with App(ws) as app:
        store = app.open_store(create=True)
        chunks = [Chunk(ordinal=i, text=f"chunk {i}", start=i, end=i + 1, token_count=2) for i in range(N_CHUNKS)]
        store.replace_document(Document("/d.txt", "txt", "x", [Section("x", 0)]), "h", 1, 1.0, chunks)
        ids = sorted(store.chunk_ids())
        if app.indexes.kind(store) == "pgvector":
            index: WorkspaceIndex | PgVectorWorkspaceIndex = PgVectorWorkspaceIndex(store, DIM, "test|8", 16)
        else:
            index = WorkspaceIndex(ws / "index.faiss", store, DIM, "test|8", "flat", 32)
        index.reconcile()
        index.add(ids, np.random.default_rng(0).normal(size=(len(ids), DIM)).astype(np.float32))
        index.save()
        app.indexes.keywords(store).sync()


def doctor(ws: Path) -> tuple[int, dict]:
    code, out, _ = run("-w", str(ws), "doctor", "--json")
    return code, json.loads(out)


def levels(report: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in report["findings"]:
        found.setdefault(f["check"], set()).add(f["level"])
    return found


@pytest.mark.usefixtures("database")
def test_doctor_passes_a_healthy_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    small_workspace(ws)
    code, report = doctor(ws)
    assert code == 0 and report["ok"] is True
    assert levels(report) == {
        "database": {"ok"}, "vector index": {"ok"}, "keyword index": {"ok"}, "ingest runs": {"ok"}
    }  # fmt: skip


@pytest.mark.usefixtures("database")
def test_a_killed_ingest_shows_as_interrupted_not_running(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    small_workspace(ws)
    with App(ws) as app:  # an ingest that was killed: its row still says running
        with app.open_store().session() as s:
            s.add(IngestRun(paths=["/d.txt"]))
            s.commit()
        with app.ingest_lock():  # ...while one really runs, it is running
            assert app.status()["last_ingest"]["status"] == "running"
    code, out, _ = run("-w", str(ws), "status", "--json")
    assert json.loads(out)["last_ingest"]["status"] == "interrupted"
    code, out, _ = run("-w", str(ws), "status")
    assert "Last ingest: #1 interrupted" in out
    code, report = doctor(ws)
    assert code == 0 and "warning" in levels(report)["ingest runs"]  # the next ingest completes it


@pytest.mark.usefixtures("database")
def test_doctor_and_status_report_vectors_missing_for_indexed_chunks(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    small_workspace(ws)
    with App(ws) as app:
        store = app.open_store()
        if app.indexes.kind(store) == "pgvector":  # someone emptied the table by hand
            with store.engine.begin() as connection:
                connection.execute(text("DELETE FROM chunk_vectors"))
        else:
            (ws / "index.faiss").unlink()
    code, out, _ = run("-w", str(ws), "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["pending"] == N_CHUNKS and status["index"]["state"] in ("missing", "incomplete")
    code, out, _ = run("-w", str(ws), "status")
    assert f"({N_CHUNKS} waiting to be indexed)" in out and "rebuild: `ragapp ingest PATH`" in out
    code, report = doctor(ws)
    assert code == 1 and report["ok"] is False
    assert levels(report)["vector index"] == {"error"}
    problem = next(f["message"] for f in report["findings"] if f["check"] == "vector index")
    assert "ragapp ingest" in problem


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_a_damaged_database_is_one_line_for_every_command_sqlite(tmp_path: Path, how: str) -> None:
    """`truncate -s 100 ragapp.db` (a traceback before), and a 0-byte ragapp.db beside an index (taken for
    an empty workspace before; an ingest would have started over on it)."""
    ws = tmp_path / "ws"
    small_workspace(ws)
    os.truncate(ws / "ragapp.db", 100 if how == "truncated" else 0)
    for command in (["status"], ["search", "anything"], ["ask", "anything"], ["ingest", str(tmp_path)], ["doctor"]):
        code, out, err = run("-w", str(ws), *command)
        assert code == 1, (command, out, err)
        lines = (err + out).strip().splitlines()
        message = next(line for line in lines if str(ws / "ragapp.db") in line)
        assert "is damaged" in message and "restore it from a backup" in message and "ragapp doctor" in message
        assert "Traceback" not in err
    assert (ws / "ragapp.db").stat().st_size == (100 if how == "truncated" else 0)  # left as found


def test_a_new_workspace_with_an_empty_database_file_is_just_empty_sqlite(tmp_path: Path) -> None:
    """A 0-byte ragapp.db alone is what an ingest killed in its first instant leaves: not damage."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "ragapp.db").write_bytes(b"")
    code, out, _ = run("-w", str(ws), "status", "--json")
    assert code == 0 and json.loads(out)["documents"] == 0
    assert doctor(ws)[0] == 0
