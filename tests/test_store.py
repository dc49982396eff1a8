"""The SQL store: schema versioning, one-transaction document replacement, ids never reused.

Every test runs on SQLite and on PostgreSQL (the `database` fixture)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ragapp.connectors import Document, Section
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from ragapp.chunking import Chunk
from ragapp.errors import WorkspaceError
from ragapp.store import MIGRATIONS, SCHEMA_VERSION, DocumentRow, Meta, Store, StoreMissing, database_url, migrate


@pytest.fixture
def url(tmp_path: Path, database: str) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite'}" if database == "sqlite" else database


def make_doc(source: str, body: str) -> Document:
    return Document(source=source, kind="txt", text=body, sections=[Section(body, 0)], title="T")


def make_chunks(n: int) -> list[Chunk]:
    return [Chunk(ordinal=i, text=f"chunk {i}", start=i * 10, end=i * 10 + 7, token_count=2) for i in range(n)]


def test_new_store_is_at_current_schema(url: str) -> None:
    store = Store(url)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    tables = set(inspect(store.engine).get_table_names())
    assert {"meta", "documents", "chunks", "ingest_runs", "ingest_problems"} <= tables


def test_newer_schema_is_refused(url: str) -> None:
    Store(url).set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(WorkspaceError, match="newer than this ragapp supports"):
        Store(url)


def test_migrations_run_in_order_once(url: str) -> None:
    # Control-flow test with made-up steps after ragapp's real ones.
    store = Store(url)
    calls: list[int] = []

    def step(n: int):
        def run(session) -> None:
            calls.append(n)
            session.execute(text(f"CREATE TABLE extra_{n} (x INTEGER)"))

        return run

    steps = {**MIGRATIONS, SCHEMA_VERSION + 1: step(1), SCHEMA_VERSION + 2: step(2)}
    with store.session() as s:
        assert migrate(s, steps) == SCHEMA_VERSION + 2
    assert calls == [1, 2]  # the real versions were already applied
    with store.session() as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION + 2)
        migrate(s, steps)
    assert calls == [1, 2]


def test_version_1_workspace_gains_eval_tables_and_keeps_its_documents(url: str) -> None:
    engine = create_engine(database_url(url))
    with Session(engine) as s:  # a workspace as schema 1 left it, with one document
        migrate(s, {1: MIGRATIONS[1]})
        s.add(DocumentRow(source="/a.txt", kind="txt", content_hash="h", size=5, mtime=0.0))
        s.commit()
    assert "eval_runs" not in inspect(engine).get_table_names()
    engine.dispose()
    store = Store(url)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert {"eval_runs", "eval_items"} <= set(inspect(store.engine).get_table_names())
    assert list(store.documents_by_source()) == ["/a.txt"]


def test_replace_document_swaps_chunks_and_never_reuses_ids(url: str) -> None:
    store = Store(url)
    assert store.replace_document(make_doc("/a.txt", "x"), "h1", 1, 1.0, make_chunks(3)) == []
    first = store.chunk_ids()
    old = store.replace_document(make_doc("/a.txt", "y"), "h2", 1, 2.0, make_chunks(2))
    assert set(old) == first
    second = store.chunk_ids()
    assert len(second) == 2 and not (second & first)
    assert store.counts() == {"documents": 1, "chunks": 2, "pending": 2}
    deleted = store.delete_documents(["/a.txt"])
    assert set(deleted) == second
    store.replace_document(make_doc("/b.txt", "z"), "h3", 1, 3.0, make_chunks(1))
    assert min(store.chunk_ids()) > max(second)  # AUTOINCREMENT, sequences: deleted ids never come back
    assert store.documents_by_source()["/b.txt"].content_hash == "h3"


def test_deleting_more_documents_than_one_batch_removes_all_of_them_and_only_them(url: str) -> None:
    store = Store(url)
    for i in range(1203):
        store.replace_document(make_doc(f"/d{i}.txt", "x"), f"h{i}", 1, 1.0, make_chunks(2))
    kept = set(store.chunk_ids())
    gone = [f"/d{i}.txt" for i in range(1200)] + ["/never-stored.txt"]
    deleted = store.delete_documents(gone)
    assert len(deleted) == 2400 and len(set(deleted)) == 2400
    assert sorted(store.documents_by_source()) == ["/d1200.txt", "/d1201.txt", "/d1202.txt"]
    assert store.chunk_ids() == kept - set(deleted) and len(store.chunk_ids()) == 6


def test_pending_chunks_include_title_and_heading(url: str) -> None:
    store = Store(url)
    doc = make_doc("/a.txt", "body")
    chunks = [Chunk(ordinal=0, text="body text", start=0, end=9, token_count=2, heading="Setup")]
    store.replace_document(doc, "h", 1, 1.0, chunks)
    [[(chunk_id, embed_text)]] = list(store.pending_chunks())
    assert embed_text == "T — Setup\nbody text"
    store.set_indexed([chunk_id], True)
    assert list(store.pending_chunks()) == []


def test_text_with_nul_characters_is_stored(url: str) -> None:
    """PostgreSQL refuses NUL in text; it is stored as U+FFFD on both databases, one character for one."""
    store = Store(url)
    chunk = Chunk(ordinal=0, text="a\x00b", start=0, end=3, token_count=2, heading="h\x00")
    store.replace_document(make_doc("/n\x00.txt", "a\x00b"), "h", 1, 1.0, [chunk])
    [[(_, embed_text)]] = list(store.pending_chunks())
    assert embed_text.endswith("a\ufffdb") and "\x00" not in embed_text
    assert list(store.documents_by_source()) == ["/n\ufffd.txt"]


def test_store_missing_and_unreachable_database(url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreMissing, match="holds no ragapp workspace"):
        Store(url, create=False)
    Store(url).close()
    assert Store(url, create=False).get_meta("schema_version") == str(SCHEMA_VERSION)
    with pytest.raises(WorkspaceError, match=r"cannot open the database postgresql://ragapp:\*\*\*@/nodb"):
        Store(f"postgresql://ragapp:secret@/nodb?host={tmp_path}")
    with pytest.raises(WorkspaceError, match="is not a database URL"):
        Store("not a url")


def test_migration_of_many_processes_at_once_runs_each_step_once(url: str) -> None:
    """Processes opening a new database at the same time (replicas starting) wait for each other."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store(url), range(4)))
    assert {s.get_meta("schema_version") for s in stores} == {str(SCHEMA_VERSION)}
    for s in stores:
        s.close()


def test_version_5_conversations_gain_sentences_and_keep_their_turns(url: str) -> None:
    from ragapp.service.conversations import Conversations

    engine = create_engine(database_url(url))
    with Session(engine) as s:  # conversation turns as schema 5 left them: no `sentences`, no `abstained`
        migrate(s, {v: MIGRATIONS[v] for v in (1, 2, 3, 4, 5)})
        s.execute(text("ALTER TABLE conversation_turns DROP COLUMN sentences"))
        s.execute(text("ALTER TABLE conversation_turns DROP COLUMN abstained"))
        s.execute(
            text("INSERT INTO conversations (id, collection, created_at) VALUES ('c1', 'default', CURRENT_TIMESTAMP)")
        )
        s.execute(
            text(
                "INSERT INTO conversation_turns (conversation_id, question, standalone, answer, citations, created_at) "
                "VALUES ('c1', 'q', 'q', 'a [1].', '[{\"n\": 1}]', CURRENT_TIMESTAMP)"
            )
        )
        s.commit()
    engine.dispose()
    store = Store(url)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    [turn] = Conversations(store).turns("c1", "default", None)
    assert (turn["answer"], turn["citations"], turn["sentences"], turn["abstained"]) == (
        "a [1].",
        [{"n": 1}],
        [],
        False,
    )
    store.close()


def test_version_3_database_gains_the_job_worker_column_and_keeps_its_jobs(url: str) -> None:
    engine = create_engine(database_url(url))
    with Session(engine) as s:  # a database as schema 3 left it: ingest_jobs without `worker`, one job queued
        migrate(s, {v: MIGRATIONS[v] for v in (1, 2, 3)})
        s.execute(text("ALTER TABLE ingest_jobs DROP COLUMN worker"))
        s.execute(
            text(
                "INSERT INTO ingest_jobs (id, collection, status, files, report, created_at) "
                "VALUES ('j1', 'default', 'queued', '[]', '{}', CURRENT_TIMESTAMP)"
            )
        )
        s.commit()
    engine.dispose()
    store = Store(url)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) == "6"
    with store.session() as s:
        assert s.execute(text("SELECT id, worker FROM ingest_jobs")).all() == [("j1", None)]
    store.close()


# -- a damaged SQLite file (issue 21, defect 9); about the file itself, so SQLite only ----------------


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, 100)  # `truncate -s 100 ragapp.db`: the header, no pages
    elif how == "overwritten":
        path.write_bytes(b"not a database at all " * 200)
    else:  # a page in the middle of a larger database, met by a later query
        with path.open("r+b") as f:
            f.seek(4096 * 3)
            f.write(bytes(range(256)) * 16)


@pytest.mark.parametrize("how", ["truncated", "overwritten", "torn page"])
def test_a_damaged_sqlite_file_is_one_clear_error_naming_it(tmp_path: Path, how: str) -> None:
    path = tmp_path / "ragapp.db"
    store = Store(f"sqlite:///{path}")
    for n in range(40):  # a few pages of documents and chunks
        store.replace_document(make_doc(f"/d{n}.txt", "x" * 500), f"h{n}", 1, 1.0, make_chunks(5))
    store.close()
    _damage(path, how)
    with pytest.raises(WorkspaceError) as raised:  # DamagedDatabase, a one-line error the CLI prints
        damaged = Store(f"sqlite:///{path}", create=False)
        damaged.counts()
        damaged.document_list()
        damaged.chunks_with_documents(list(range(1, 201)))
    message = str(raised.value)
    assert str(path) in message and "restore it from a backup" in message and "ragapp doctor" in message
    assert "\n" not in message


def test_the_error_leaves_a_session_even_when_its_rollback_fails(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that cancels PostgreSQL's query can break the connection, and the rollback then fails too:
    the Ctrl-C must still be what leaves (an ingest records itself "interrupted", not "failed").
    The failing rollback is injected (a fault, on a real store)."""
    from sqlalchemy.exc import OperationalError

    from ragapp.ingest import _interrupted

    store = Store(url)

    def broken_rollback(self: Session) -> None:
        raise OperationalError("ROLLBACK", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(Session, "rollback", broken_rollback)
    with pytest.raises(KeyboardInterrupt), store.session() as s:
        s.execute(text("SELECT 1"))
        raise KeyboardInterrupt
    monkeypatch.undo()
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)  # the store still works

    try:  # an error raised while handling a Ctrl-C still counts as one; an error alone does not
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OperationalError("COMMIT", {}, Exception("connection lost"))
    except OperationalError as exc:
        assert _interrupted(exc) is True
    assert _interrupted(OperationalError("COMMIT", {}, Exception("connection lost"))) is False
