"""Two `ragapp ingest` processes at once on one PostgreSQL database, as from two machines (each its own
workspace folder): both finish, and the store holds every chunk exactly once, each with one vector."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from ragapp import App
from ragapp.store import ChunkRow, DocumentRow
from tests.support import IngestedDocs, new_database

pytestmark = pytest.mark.slow


def ingest_process(workspace: Path, url: str, *paths: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGAPP_DATABASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "ragapp", "-w", str(workspace), "ingest", *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def contents(app: App) -> list[tuple[str, int, str]]:
    with app.open_store().session() as s:
        rows = s.execute(select(DocumentRow.source, ChunkRow.ordinal, ChunkRow.text).join(ChunkRow.document)).all()
    return sorted((Path(source).name, ordinal, chunk) for source, ordinal, chunk in rows)


def split_docs(tmp_path: Path, docs: Path) -> tuple[Path, Path]:
    """Two folders of real Markdown (ragapp's docs) that share some files: the 8 smallest pages, so that the
    five ingest processes spend their time on taking turns, not on embedding."""
    files = sorted(sorted(docs.glob("*.md"), key=lambda f: f.stat().st_size)[:8])
    if len(files) < 6:
        pytest.skip(f"too little documentation in {docs}")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    half = len(files) // 2
    for f in files[: half + 2]:
        shutil.copy(f, a / f.name)
    for f in files[half - 2 :]:
        shutil.copy(f, b / f.name)
    return a, b


def test_two_ingests_at_once_lose_and_duplicate_nothing(
    tmp_path: Path, postgres_server: Any, ingested_docs: IngestedDocs
) -> None:
    a, b = split_docs(tmp_path, ingested_docs.corpus)
    url = new_database(postgres_server)
    # The same folder from two "machines" at once, and a second folder overlapping it, all at the same time.
    procs = [
        ingest_process(tmp_path / "ws1", url, a),
        ingest_process(tmp_path / "ws2", url, a),
        ingest_process(tmp_path / "ws3", url, b),
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert sum("waiting for another ingest" in err for _, err in outputs) >= 1  # they took turns

    shared = App(tmp_path / "ws1", config={"database": {"url": url}})
    expected_sources = {str(p.resolve()) for p in (*a.iterdir(), *b.iterdir())}
    store = shared.open_store()
    with store.session() as s:
        sources = list(s.scalars(select(DocumentRow.source)))
        assert len(sources) == len(set(sources)) and set(sources) == expected_sources
        per_document = s.execute(
            select(ChunkRow.document_id, ChunkRow.ordinal, func.count()).group_by(
                ChunkRow.document_id, ChunkRow.ordinal
            )
        ).all()
        assert all(n == 1 for _, _, n in per_document)  # no chunk twice
    assert store.counts()["pending"] == 0
    with store.engine.connect() as connection:
        vectors = [r[0] for r in connection.execute(text("SELECT chunk_id FROM chunk_vectors"))]
    assert len(vectors) == len(set(vectors)) and set(vectors) == store.chunk_ids()

    # Nothing lost: those files' chunks in one ingest of all of docs/ into SQLite (the session's, copied),
    # with the files a and b share counted twice (each folder's copy is a document of its own).
    reference = App(ingested_docs.folder, config={"database": {"url": ""}})
    names = {p.name for p in (*a.iterdir(), *b.iterdir())}
    both = {p.name for p in a.iterdir()} & {p.name for p in b.iterdir()}
    rows = contents(reference)
    expected = sorted([row for row in rows if row[0] in names] + [row for row in rows if row[0] in both])
    assert contents(shared) == expected
    question = "how do I keep the workspace in PostgreSQL"
    hit = shared.search(question, k=1)[0]
    assert hit.text == reference.search(question, k=1, filters={"source": sorted(names)})[0].text

    # Run again from both machines at once: everything is unchanged, nothing is embedded again.
    again = [ingest_process(tmp_path / "ws1", url, a, b), ingest_process(tmp_path / "ws2", url, a, b)]
    for proc in again:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert ": 0 new, 0 updated," in out and "Chunks: 0 added" in out, out
    assert contents(shared) == expected
