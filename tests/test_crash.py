"""Killing a real `ragapp ingest` process at any moment must leave a workspace the next run completes.

The subprocess saves the index after every small batch (test tuning, set below) so kills land in
every window of the save protocol: mid-document, after an index save, before SQL is marked.
Both stores: SQLite + FAISS files, and PostgreSQL + pgvector (the `database` fixture).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ragapp.indexes import Bm25Index
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from ragapp import App
from ragapp.keyword_index import POINTER_KEY
from ragapp.store import ChunkRow, DocumentRow, IngestRun, database_url
from tests.support import DOCS, default_sigint
from tests.workspace import vector_ids

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("database")]

RUNNER = (
    "import sys, ragapp.ingest as ingest; ingest.SAVE_EVERY_S = 0.0; ingest.EMBED_BATCH = 16; "
    "from ragapp.cli import main; sys.argv = ['ragapp', '--workspace', sys.argv[1], 'ingest', sys.argv[2]]; main()"
)


def build_corpus(folder: Path, docs: Path, n_files: int = 16) -> None:
    """Real prose (ragapp's docs) reshuffled into many distinct files, so ingest takes a while."""
    folder.mkdir()
    paragraphs = [
        p for f in sorted(docs.glob("*.md")) for p in f.read_text(encoding="utf-8").split("\n\n") if len(p) > 80
    ]
    rng = random.Random(7)
    for i in range(n_files):
        picked = rng.sample(paragraphs, min(12, len(paragraphs)))
        (folder / f"part-{i:02d}.md").write_text(f"# Part {i}\n\n" + "\n\n".join(picked) + "\n", encoding="utf-8")


def reader(ws: Path) -> Engine | None:
    """An engine reading the workspace's store as a concurrent process does; None before SQLite's file exists.

    One per polling loop: a new engine per poll cost about 10 ms of CPU on PostgreSQL (a connection, and a
    server process forked for it), a third of a core taken from the ingest being watched."""
    url = os.environ.get("RAGAPP_DATABASE_URL")
    if url is None:
        db = ws / "ragapp.db"
        if not db.exists():
            return None
        url = f"sqlite:///file:{db}?mode=ro&uri=true"
    return create_engine(database_url(url))


def read_counts(engine: Engine | None) -> tuple[int, int]:
    """(chunks, indexed chunks); (0, 0) before the schema exists."""
    if engine is None:
        return 0, 0
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT count(*), count(*) FILTER (WHERE indexed) FROM chunks")).one()
            return int(row[0]), int(row[1])
    except (OperationalError, ProgrammingError):
        return 0, 0


def counts(ws: Path) -> tuple[int, int]:
    engine = reader(ws)
    try:
        return read_counts(engine)
    finally:
        if engine is not None:
            engine.dispose()


def kill_when(ws: Path, corpus: Path, condition, sig: int = signal.SIGKILL, timeout: float = 240.0) -> int | None:
    """Start ingest, send `sig` once condition(chunks, indexed) holds; its exit code, None if it finished first."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(ws), str(corpus)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,  # noqa: PLW1509 - it only resets a signal handler; nothing that a thread could hold
    )
    deadline = time.monotonic() + timeout
    engine = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.stderr.read().decode()
                return None
            engine = engine or reader(ws)
            if condition(*read_counts(engine)):
                proc.send_signal(sig)
                return proc.wait(timeout=120)
            time.sleep(0.02)
        raise AssertionError("ingest subprocess did not reach the kill point in time")
    finally:
        if engine is not None:
            engine.dispose()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def contents(app: App) -> set[tuple[str, int, str]]:
    store = app.open_store()
    with store.session() as s:
        rows = s.execute(select(DocumentRow.source, ChunkRow.ordinal, ChunkRow.text).join(ChunkRow.document)).all()
    return {(Path(source).name, ordinal, text) for source, ordinal, text in rows}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 16-file corpus, built once: every ingest of it here only reads it."""
    folder = tmp_path_factory.mktemp("crash") / "big"
    build_corpus(folder, DOCS)
    return folder


@pytest.fixture(scope="module")
def clean(big: Path, tmp_path_factory: pytest.TempPathFactory) -> App:
    """`big` ingested without interruption into a SQLite workspace: what each store must end up holding."""
    app = App(tmp_path_factory.mktemp("crash") / "clean", config={"database": {"url": ""}})
    app.ingest([big], progress=False)
    return app


def test_kill_at_every_stage_then_resume(tmp_path: Path, big: Path, clean: App) -> None:
    ws = tmp_path / "ws"

    killed_points = []
    first_chunks = lambda chunks, indexed: chunks > 0
    some_indexed = lambda chunks, indexed: indexed > 0
    killed_points.append(kill_when(ws, big, first_chunks))
    seen = counts(ws)
    killed_points.append(kill_when(ws, big, lambda c, i: i > seen[1] and some_indexed(c, i)))
    seen = counts(ws)
    killed_points.append(kill_when(ws, big, lambda c, i: c > seen[0] + 40 or i > seen[1] + 40))
    assert None not in killed_points[:2], "a kill did not land mid-ingest; the test corpus is too small"

    resumed = App(ws)  # the next run, in-process: its embedder is loaded already
    resumed.ingest([big], progress=False)
    assert contents(resumed) == contents(clean)  # no duplicate, no lost chunk
    store = resumed.open_store()
    assert store.counts()["pending"] == 0
    ids = vector_ids(resumed)
    assert len(ids) == len(set(ids)) and set(ids) == store.chunk_ids()
    assert (
        resumed.search("configuration precedence", k=1)[0].text == clean.search("configuration precedence", k=1)[0].text
    )
    pointer = store.get_meta(POINTER_KEY)
    assert [p.name for p in ws.glob("bm25-*")] == [pointer]  # no half-written keyword index left behind
    assert set(Bm25Index.load(ws / pointer).ids.tolist()) == store.chunk_ids()
    with store.session() as s:
        runs = list(s.scalars(select(IngestRun.status).order_by(IngestRun.id)))
    assert runs[-1] == "completed"
    assert "interrupted" in runs and "running" not in runs  # killed runs are recorded as such


def test_ctrl_c_is_recorded_as_interrupted_and_resumed(tmp_path: Path, corpus: Path) -> None:
    big = tmp_path / "big"
    build_corpus(big, corpus, n_files=6)
    ws = tmp_path / "ws"
    returncode = kill_when(ws, big, lambda chunks, indexed: chunks > 0, sig=signal.SIGINT)
    assert returncode is not None and returncode != 0  # Ctrl-C ends the command with an error status
    # What `ragapp status` shows. The process records "interrupted" itself, waiting at most 2 s for the
    # database; should that fail, the run is shown as interrupted all the same (no ingest holds the lock).
    assert App(ws).status()["last_ingest"]["status"] == "interrupted"
    report = App(ws).ingest([big])
    assert report.added + report.unchanged == 6
    assert App(ws).open_store().counts()["pending"] == 0
    with App(ws).open_store().session() as s:  # and the database says so once the next run has started
        assert list(s.scalars(select(IngestRun.status).order_by(IngestRun.id))) == ["interrupted", "completed"]
