"""The SQL store: the source of truth for documents, chunks and ingest runs.

Chunk rows are immutable: a changed file gets new chunk rows with new ids, so a chunk id always
names the same text and the vector index can be reconciled against this store by id alone.
Ids are never reused (SQLite AUTOINCREMENT, PostgreSQL sequences) for the same reason.

The same models and migrations run on SQLite (the workspace's own file) and PostgreSQL (shared by
any number of ragapp processes on any number of machines).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ragapp.errors import DamagedDatabase, WorkspaceError
from ragapp.locks import exclusive_lock

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ragapp.chunking import Chunk
    from ragapp.connectors import Document

SCHEMA_VERSION = 6
# Row ids: 64-bit on PostgreSQL (ids are never reused, so they only grow); SQLite's INTEGER is 64-bit already
# and must stay INTEGER to be the rowid that AUTOINCREMENT works on.
RowId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class SafeText(TypeDecorator[str]):
    """Text that any database stores: PostgreSQL refuses NUL characters, so they become U+FFFD on every
    database (one character for one: chunk offsets stay right)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(SafeText)


class DocumentRow(Base):
    __tablename__ = "documents"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    source: Mapped[str] = mapped_column(SafeText, unique=True)
    kind: Mapped[str] = mapped_column(SafeText)
    title: Mapped[str | None] = mapped_column(SafeText)
    content_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[float] = mapped_column(Float)
    doc_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    chunks: Mapped[list[ChunkRow]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )


class ChunkRow(Base):
    __tablename__ = "chunks"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    document_id: Mapped[int] = mapped_column(RowId, ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(SafeText)
    heading: Mapped[str | None] = mapped_column(SafeText)
    anchor: Mapped[str | None] = mapped_column(SafeText)
    page: Mapped[int | None] = mapped_column(Integer)
    start_char: Mapped[int] = mapped_column(Integer)
    end_char: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)
    # False until the chunk's vector is durably in the index; the index is reconciled on open.
    indexed: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    document: Mapped[DocumentRow] = relationship(back_populates="chunks")


class IngestRun(Base):
    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | completed | failed | interrupted
    paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    files_seen: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    chunks_added: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    problems: Mapped[list[IngestProblem]] = relationship(cascade="all, delete-orphan")


class IngestProblem(Base):
    __tablename__ = "ingest_problems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ingest_runs.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(SafeText)
    severity: Mapped[str] = mapped_column(String(8))  # "error" (not ingested) | "warning" (ingested)
    reason: Mapped[str] = mapped_column(SafeText)


class EvalRunRow(Base):
    """An evaluation run; its items are saved a batch at a time, so an interrupted run can be continued."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(SafeText, unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # pipeline | score
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | completed | interrupted | failed
    dataset: Mapped[str] = mapped_column(SafeText)
    dataset_hash: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # summed over all sessions that worked on it
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    models: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    aggregates: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    problems: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    total: Mapped[int] = mapped_column(Integer, default=0)  # dataset rows to evaluate


class EvalItemRow(Base):
    __tablename__ = "eval_items"
    __table_args__ = (UniqueConstraint("run_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # line number in the dataset
    item_id: Mapped[str] = mapped_column(SafeText)
    question: Mapped[str] = mapped_column(SafeText)
    reference: Mapped[str] = mapped_column(SafeText)
    prediction: Mapped[str] = mapped_column(SafeText, default="")
    expected_sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(SafeText)
    # Version 5: the answer's attributed sentences, whether it abstained, the LLM judge's claims (NULL before).
    sentences: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    abstained: Mapped[bool | None] = mapped_column(Boolean)
    judge: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ApiKeyRow(Base):
    """An HTTP API key. Only a hash of the secret is stored; rows are revoked, never deleted, so a
    workspace that ever had a key keeps requiring one."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(SafeText, default="")
    prefix: Mapped[str] = mapped_column(String(16))  # the secret's first characters, to recognise it in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    collections: Mapped[list[str]] = mapped_column(JSON, default=list)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer)  # who started it; other keys cannot read it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    turns: Mapped[list[TurnRow]] = relationship(cascade="all, delete-orphan", order_by="TurnRow.id")


class TurnRow(Base):
    """One question and its answer; `standalone` is the question rewritten without the history."""

    __tablename__ = "conversation_turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    question: Mapped[str] = mapped_column(SafeText)
    standalone: Mapped[str] = mapped_column(SafeText)
    answer: Mapped[str] = mapped_column(SafeText)
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Version 6: the answer's attributed sentences and whether it abstained (NULL before).
    sentences: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    abstained: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IngestJobRow(Base):
    """Uploaded files waiting for (or done with) ingestion; the queue survives a server restart."""

    __tablename__ = "ingest_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | completed | failed
    # The server holding the uploaded files ("host:workspace folder"); only it can run the job. Servers
    # sharing a database (replicas) each see all jobs but work their own. None: a job from before version 4.
    worker: Mapped[str | None] = mapped_column(SafeText)
    files: Mapped[list[str]] = mapped_column(JSON, default=list)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(SafeText)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# version -> step that brings a database at version-1 to it. Each step names its own tables, so a
# step means the same thing whenever it runs, however many tables later versions add.
Migration = Callable[[Session], None]
_V1_TABLES = ("meta", "documents", "chunks", "ingest_runs", "ingest_problems")
_V2_TABLES = ("eval_runs", "eval_items")
_V3_TABLES = ("api_keys", "conversations", "conversation_turns", "ingest_jobs")


def _create(*names: str) -> Migration:
    def step(session: Session) -> None:
        Base.metadata.create_all(session.connection(), tables=[Base.metadata.tables[n] for n in names])

    return step


def _add_column(table: str, column: str, sql_type: str) -> Migration:
    """A column added to a table an earlier step creates (which already has it when created by this version)."""

    def step(session: Session) -> None:
        connection = session.connection()
        schema = connection.schema_for_object(Base.metadata.tables[table])
        if column not in {c["name"] for c in inspect(connection).get_columns(table, schema=schema)}:
            qualified = f'"{schema}".{table}' if schema else table
            connection.execute(text(f"ALTER TABLE {qualified} ADD COLUMN {column} {sql_type}"))

    return step


def _steps(*steps: Migration) -> Migration:
    """Several steps as one version."""

    def step(session: Session) -> None:
        for each in steps:
            each(session)

    return step


MIGRATIONS: dict[int, Migration] = {
    1: _create(*_V1_TABLES),
    2: _create(*_V2_TABLES),
    3: _create(*_V3_TABLES),
    4: _add_column("ingest_jobs", "worker", "TEXT"),
    5: _steps(
        _add_column("eval_items", "sentences", "JSON"),
        _add_column("eval_items", "abstained", "BOOLEAN"),
        _add_column("eval_items", "judge", "JSON"),
    ),
    6: _steps(
        _add_column("conversation_turns", "sentences", "JSON"),
        _add_column("conversation_turns", "abstained", "BOOLEAN"),
    ),
}


BUSY_TIMEOUT_MS = 30_000  # how long a SQLite statement waits for another connection's write lock


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for `name`."""
    return int.from_bytes(hashlib.sha256(f"ragapp:{name}".encode()).digest()[:8], "big", signed=True)


def migrate(session: Session, migrations: dict[int, Migration] = MIGRATIONS, lock: str = "migrate") -> int:
    """Bring the schema to the newest version in one transaction; refuse a newer database.

    On PostgreSQL, processes that start at once wait for each other here (a transaction-scoped advisory
    lock), so a step runs exactly once; its DDL commits or rolls back with the version row."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(lock_key(lock))))
    target = max(migrations)
    connection = session.connection()
    meta = cast(Table, Meta.__table__)  # a mapped class's __table__ is its Table
    has_meta = inspect(connection).has_table("meta", schema=connection.schema_for_object(meta))
    current = 0
    if has_meta:
        row = session.get(Meta, "schema_version")
        current = int(row.value) if row else 0
    if current > target:
        raise WorkspaceError(
            f"workspace schema version {current} is newer than this ragapp supports ({target}): upgrade ragapp"
        )
    for version in range(current + 1, target + 1):
        migrations[version](session)
        session.merge(Meta(key="schema_version", value=str(version)))
    session.commit()
    return target


def database_url(url: str) -> URL:
    """A SQLAlchemy URL; plain postgresql:// (psql's spelling) gets the psycopg 3 driver ragapp installs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise WorkspaceError(
            f"database.url {url!r} is not a database URL (e.g. postgresql://user@host/dbname)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def shown_url(url: str) -> str:
    """The URL with its password masked, for messages and `ragapp status`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _reason(exc: OperationalError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def damaged_message(path: str, reason: str) -> str:
    """The one line for a workspace database that is no longer a whole SQLite file, and the ways out."""
    return (
        f"the database {path} is damaged ({reason}): restore it from a backup, or move it away and run "
        "`ragapp ingest PATH` again to rebuild the workspace from your files (`ragapp doctor` checks a workspace)"
    )


class StoreMissing(WorkspaceError):
    """The database has no ragapp tables yet (and the caller did not ask to create them)."""


class Store:
    def __init__(self, url: str, create: bool = True, pg_schema: str = ""):
        """`pg_schema`: on PostgreSQL, the schema holding the tables (created if missing); ignored on SQLite."""
        self.url = url
        parsed = database_url(url)
        self.pg_schema = pg_schema if parsed.get_backend_name() == "postgresql" else ""
        try:
            self.engine: Engine = self._engine(parsed, create)
        except ImportError as exc:
            raise WorkspaceError(f"{shown_url(url)}: the database driver is not installed ({exc})") from None
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "handle_error", self._damaged_sqlite)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self._migrate(create)
        except OperationalError as exc:
            self.engine.dispose()
            raise WorkspaceError(f"cannot open the database {shown_url(url)}: {_reason(exc)}") from None
        except BaseException:
            self.engine.dispose()
            raise

    def _migrate(self, create: bool) -> None:
        with self._sqlite_file_lock(), self.session() as session:
            if not create and not inspect(session.connection()).has_table("meta", schema=self.pg_schema or None):
                raise StoreMissing(f"{shown_url(self.url)} holds no ragapp workspace" + self._in_schema)
            migrate(session, lock=self._lock_name("migrate"))

    @contextmanager
    def _sqlite_file_lock(self) -> Iterator[None]:
        """SQLite has no advisory locks, and pysqlite runs DDL outside transactions: processes opening a new
        database at once take turns on a lock file beside it (`ragapp.locks` says why never on the file itself)."""
        database = self.engine.url.database if self.dialect == "sqlite" else None
        if not database or database == ":memory:" or database.startswith("file:"):
            yield
            return
        with ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(f"{database}.migrate-lock"))
            except OSError:  # a read-only folder: nothing here can migrate a schema either, so nothing to order
                pass
            yield

    def _damaged_sqlite(self, context: ExceptionContext) -> None:
        """SQLite's words for a file that is not (or no longer wholly) a database, wherever a statement meets
        them, become one clear error naming the file. Only the plain DatabaseError: its subclasses are a
        locked database, an I/O error, a constraint..., which a damaged file is not."""
        if type(context.original_exception) is sqlite3.DatabaseError:
            path = self.engine.url.database or self.url
            raise DamagedDatabase(damaged_message(path, str(context.original_exception))) from None

    @property
    def _in_schema(self) -> str:
        return f" (schema {self.pg_schema})" if self.pg_schema else ""

    def _lock_name(self, purpose: str) -> str:
        return f"{purpose}:{self.pg_schema}"

    def _engine(self, url: URL, create: bool) -> Engine:
        if url.get_backend_name() == "sqlite":
            return create_engine(url)
        if not self.pg_schema:
            return create_engine(url, pool_pre_ping=True)
        # Every statement (ORM, DDL, raw SQL) finds this workspace's tables first; extensions stay in public.
        if create:  # before any connection of the engine below: each resolves its search path when it opens
            bootstrap = create_engine(url)
            try:
                with bootstrap.begin() as connection:
                    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.pg_schema}"'))
            except OperationalError as exc:
                raise WorkspaceError(f"cannot open the database {shown_url(str(url))}: {_reason(exc)}") from None
            finally:
                bootstrap.dispose()
        # SQLAlchemy names the schema in everything it renders (the translate map: a table of the same name in
        # public must not be taken for this one); the search path finds pgvector's type and operators in public.
        options = f"-csearch_path={self.pg_schema},public"
        engine = create_engine(url, pool_pre_ping=True, connect_args={"options": options})
        return engine.execution_options(schema_translate_map={None: self.pg_schema})

    @contextmanager
    def session(self, lock_wait: float | None = None) -> Iterator[Session]:
        """`lock_wait`: on SQLite, seconds to wait for another writer's lock in this session (default 30)."""
        session = self._sessions()
        waiting = lock_wait is not None and self.dialect == "sqlite"
        try:
            if waiting:
                session.connection().exec_driver_sql(f"PRAGMA busy_timeout={int((lock_wait or 0) * 1000)}")
            yield session
        except BaseException:
            # A Ctrl-C that cancelled PostgreSQL's query can leave a connection whose rollback fails too: the
            # error that got here says what happened, not the failed rollback.
            with suppress(Exception):
                session.rollback()
            raise
        finally:
            if waiting:
                with suppress(Exception):  # the pooled connection goes back with the usual wait
                    session.connection().exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def writer_lock(self, wait: bool) -> Iterator[None]:
        """On PostgreSQL, one writer (ingest) at a time across every process and machine using the database.

        A session-level advisory lock, held on its own connection: it ends with the connection, so a
        killed writer never leaves it taken. SQLite needs none (the workspace's lock file covers it)."""
        if self.dialect != "postgresql":
            yield
            return
        key = lock_key(self._lock_name("ingest"))
        with self.engine.connect() as connection:
            if not connection.scalar(select(func.pg_try_advisory_lock(key))):
                if not wait:
                    raise WorkspaceError(
                        f"another ingest is running on {shown_url(self.url)}{self._in_schema}; wait for it to finish"
                    )
                log.warning("waiting for another ingest on %s%s to finish", shown_url(self.url), self._in_schema)
                connection.scalar(select(func.pg_advisory_lock(key)))
            connection.commit()
            try:
                yield
            finally:
                connection.scalar(select(func.pg_advisory_unlock(key)))
                connection.commit()

    def writer_running(self) -> bool:
        """On PostgreSQL, whether some process on some machine holds the writer lock now (False on SQLite:
        the workspace's lock file tells there). Taken and released at once if free."""
        if self.dialect != "postgresql":
            return False
        key = lock_key(self._lock_name("ingest"))
        with self.engine.connect() as connection:
            free = bool(connection.scalar(select(func.pg_try_advisory_lock(key))))
            if free:
                connection.scalar(select(func.pg_advisory_unlock(key)))
            connection.commit()
        return not free

    # -- meta -------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        """An upsert: two processes setting the same key at once must not collide on its primary key."""
        with self.session() as s:
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                statement = pg_insert(Meta).values(key=key, value=value)
                s.execute(statement.on_conflict_do_update(index_elements=[Meta.key], set_={"value": value}))
            else:
                s.merge(Meta(key=key, value=value))
            s.commit()

    # -- documents and chunks ----------------------------------------------------------------------

    def documents_by_source(self, sources: Iterable[str] | None = None) -> dict[str, DocumentRow]:
        with self.session() as s:
            query = select(DocumentRow)
            rows = s.scalars(query).all()
        wanted = None if sources is None else set(sources)
        return {r.source: r for r in rows if wanted is None or r.source in wanted}

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            return {
                "documents": s.scalar(select(func.count()).select_from(DocumentRow)) or 0,
                "chunks": s.scalar(select(func.count()).select_from(ChunkRow)) or 0,
                "pending": s.scalar(select(func.count()).where(ChunkRow.indexed.is_(False))) or 0,
            }

    def has_chunks(self) -> bool:
        """Asked before every search: one indexed lookup on a bare connection (counts() scans the table)."""
        with self.engine.connect() as connection:
            return connection.execute(select(ChunkRow.id).limit(1)).first() is not None

    def chunk_ids(self, indexed: bool | None = None) -> set[int]:
        with self.session() as s:
            query = select(ChunkRow.id)
            if indexed is not None:
                query = query.where(ChunkRow.indexed.is_(indexed))
            return set(s.scalars(query))

    def count_pending(self, after_id: int = 0) -> int:
        with self.session() as s:
            query = select(func.count()).where(ChunkRow.indexed.is_(False), ChunkRow.id > after_id)
            return s.scalar(query) or 0

    def pending_chunks(self, after_id: int = 0, batch: int = 4096) -> Iterator[list[tuple[int, str]]]:
        """(id, text to embed) of chunks not yet in the index, in id order, a batch at a time."""
        return self.index_texts(after_id, batch, pending_only=True)

    def index_texts(
        self, after_id: int = 0, batch: int = 4096, pending_only: bool = False
    ) -> Iterator[list[tuple[int, str]]]:
        """(id, text as indexes see it: with title and heading) of chunks, in id order, a batch at a time."""
        last = after_id
        while True:
            query = select(ChunkRow.id, ChunkRow.text, ChunkRow.heading, DocumentRow.title).join(DocumentRow)
            if pending_only:
                query = query.where(ChunkRow.indexed.is_(False))
            with self.session() as s:
                rows = s.execute(query.where(ChunkRow.id > last).order_by(ChunkRow.id).limit(batch)).all()
            if not rows:
                return
            yield [(r.id, embedding_text(r.title, r.heading, r.text)) for r in rows]
            last = rows[-1].id

    def set_indexed(self, ids: Iterable[int], indexed: bool) -> None:
        ids = list(ids)
        with self.session() as s:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                s.execute(update(ChunkRow).where(ChunkRow.id.in_(part)).values(indexed=indexed))
            s.commit()

    def mark_all_unindexed(self) -> None:
        with self.session() as s:
            s.execute(update(ChunkRow).values(indexed=False))
            s.commit()

    def document_ids(self, matches: Callable[[DocumentRow], bool]) -> list[int]:
        """Ids of the documents `matches` accepts (documents are far fewer than chunks: filtered here)."""
        with self.session() as s:
            return [row.id for row in s.scalars(select(DocumentRow)) if matches(row)]

    def chunk_ids_of(self, document_ids: Iterable[int]) -> list[int]:
        ids = list(document_ids)
        found: list[int] = []
        with self.session() as s:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                found.extend(s.scalars(select(ChunkRow.id).where(ChunkRow.document_id.in_(part))))
        return sorted(found)

    def chunks_with_documents(self, ids: list[int]) -> dict[int, tuple[ChunkRow, DocumentRow]]:
        with self.session() as s:
            rows = s.execute(select(ChunkRow, DocumentRow).join(DocumentRow).where(ChunkRow.id.in_(ids))).all()
        return {chunk.id: (chunk, doc) for chunk, doc in rows}

    def replace_document(
        self, document: Document, content_hash: str, size: int, mtime: float, chunks: list[Chunk]
    ) -> list[int]:
        """Insert or replace a document and all its chunks in one transaction; returns the old chunk ids."""
        with self.session() as s:
            row = s.scalar(select(DocumentRow).where(DocumentRow.source == document.source))
            old_ids: list[int] = []
            if row is None:
                row = DocumentRow(source=document.source)
                s.add(row)
            else:
                old_ids = list(s.scalars(select(ChunkRow.id).where(ChunkRow.document_id == row.id)))
                s.execute(delete(ChunkRow).where(ChunkRow.document_id == row.id))
            row.kind = document.kind
            row.title = document.title
            row.content_hash = content_hash
            row.size = size
            row.mtime = mtime
            row.doc_metadata = document.metadata
            row.updated_at = utcnow()
            s.flush()
            if chunks:
                s.execute(
                    insert(ChunkRow),
                    [
                        {
                            "document_id": row.id,
                            "ordinal": c.ordinal,
                            "text": c.text,
                            "heading": c.heading,
                            "anchor": c.anchor,
                            "page": c.page,
                            "start_char": c.start,
                            "end_char": c.end,
                            "token_count": c.token_count,
                            "indexed": False,
                        }
                        for c in chunks
                    ],
                )
            s.commit()
        return old_ids

    def delete_documents(self, sources: Iterable[str]) -> list[int]:
        """Delete documents with their chunks; returns the deleted chunk ids."""
        sources = list(sources)
        ids: list[int] = []
        with self.session() as s:  # one transaction; bounded IN (...) lists however many documents go
            for start in range(0, len(sources), 500):
                part = sources[start : start + 500]
                documents = select(DocumentRow.id).where(DocumentRow.source.in_(part))
                ids.extend(s.scalars(select(ChunkRow.id).where(ChunkRow.document_id.in_(documents))))
                s.execute(delete(ChunkRow).where(ChunkRow.document_id.in_(documents)))
                s.execute(delete(DocumentRow).where(DocumentRow.source.in_(part)))
            s.commit()
        return ids

    def document_list(self, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Documents (all, or those with `ids`) with their chunk counts, in id order."""
        query = (
            select(DocumentRow, func.count(ChunkRow.id))
            .outerjoin(ChunkRow)
            .group_by(DocumentRow.id)
            .order_by(DocumentRow.id)
        )
        if ids is not None:
            query = query.where(DocumentRow.id.in_(list(ids)))
        with self.session() as s:
            rows = s.execute(query).all()
        return [
            {
                "id": doc.id,
                "source": doc.source,
                "kind": doc.kind,
                "title": doc.title,
                "size": doc.size,
                "chunks": n,
                "metadata": doc.doc_metadata,
                "updated_at": doc.updated_at.isoformat(timespec="seconds"),
            }
            for doc, n in rows
        ]

    def last_run(self) -> IngestRun | None:
        with self.session() as s:
            return s.scalars(select(IngestRun).order_by(IngestRun.id.desc()).limit(1)).first()


def embedding_text(title: str | None, heading: str | None, text: str) -> str:
    """What gets embedded: the chunk with its document title and heading, which situate short chunks."""
    context = " — ".join(part for part in (title, heading) if part and part not in text[:200])
    return f"{context}\n{text}" if context else text
