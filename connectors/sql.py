"""Rows of a SQL database (any SQLAlchemy URL; a table or a query) as documents, one per row.

A row's `source` is the database URL (password hidden, SQLite paths made absolute), the table or a
hash of the query, and the row's key, so re-ingesting finds the same rows again and `--sync` can
remove the rows that were deleted. The database is only read: SQLite files are opened read-only and
never created; other databases are read inside a transaction that is rolled back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import sqlite3
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import sqlalchemy as sa
from ragapp.connectors.base import Document, FileProblem, Section
from sqlalchemy.engine import URL, Connection, Engine, Result, make_url
from sqlalchemy.pool import NullPool

FETCH_ROWS = 500  # rows fetched from the database at a time: memory stays flat whatever the table's size
_BINARY = (bytes, bytearray, memoryview)


def read_only_sqlite(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections to an existing SQLite file that can neither write to it nor create it (`mode=ro`,
    `query_only`): for SQLAlchemy's `creator`, wherever ragapp reads a database it was given."""
    uri = "file:" + quote(str(path), safe="/") + "?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn

    return connect


class SqlSourceError(Exception):
    """The database, table, query or template cannot be used; the message says which and why."""


class _SafeFormatter(string.Formatter):
    """str.format for untrusted templates: plain column names only, so no attribute, item or repr is reached."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        if "." in field_name or "[" in field_name:
            raise SqlSourceError(f"template field {field_name!r}: only plain column names are allowed")
        return kwargs[field_name], field_name

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            raise SqlSourceError(f"template conversion '!{conversion}' is not allowed")
        return value

    def format_field(self, value: Any, format_spec: str) -> str:
        return "" if value is None else format(value, format_spec)


_FORMATTER = _SafeFormatter()


def template_fields(template: str, what: str = "template") -> list[str]:
    """The column names a template uses, in order; SqlSourceError for anything but plain `{column}` fields."""
    names: list[str] = []

    def walk(text: str, depth: int) -> None:
        try:
            parsed = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise SqlSourceError(f"{what} {template!r}: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise SqlSourceError(f"{what} {template!r}: fields must be column names, like {{name}}")
            if "." in name or "[" in name:
                raise SqlSourceError(
                    f"{what} field {name!r}: only plain column names are allowed (no attribute access or indexing)"
                )
            if conversion is not None:
                raise SqlSourceError(f"{what} {template!r}: conversions like '!{conversion}' are not allowed")
            if name not in names:
                names.append(name)
            if spec and depth < 2:
                walk(spec, depth + 1)

    walk(template, 0)
    return names


def json_safe(value: Any) -> Any:
    """A database value as something JSON stores faithfully; `_BINARY` is the caller's to skip."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        as_float = float(value)
        return as_float if math.isfinite(as_float) and Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items() if not isinstance(v, _BINARY)}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value if not isinstance(v, _BINARY)]
    return str(value)  # uuid.UUID, timedelta, enums, driver-specific types


def _text_value(value: Any) -> Any:
    """A value as templates see it: text stays text, binary data that is not UTF-8 counts as empty."""
    if isinstance(value, _BINARY):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _filled(value: Any) -> bool:
    return value is not None and bool(str(value).strip())


def _key_part(value: Any) -> str:
    if isinstance(value, _BINARY):
        return bytes(value).hex()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _error_text(exc: BaseException) -> str:
    """The database's own message, without SQLAlchemy's statement dump and background link."""
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


@dataclass
class _Reader:
    """An open read: the connection, the running statement and the names of its columns."""

    engine: Engine
    connection: Connection
    result: Result[Any]
    columns: list[str]
    key_columns: list[str]
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.result.close()
            self.connection.rollback()  # nothing was written; never leave a transaction behind
            self.connection.close()
        finally:
            self.engine.dispose()


@dataclass
class SqlSource:
    url: str  # any SQLAlchemy URL
    table: str | None = None  # exactly one of table / query
    query: str | None = None
    id_columns: Sequence[str] = ()  # a row's key; default for a table: its primary key; required for a query
    template: str | None = None  # e.g. "{name}: {description}"; default: "column: value" lines, non-empty columns
    title: str | None = None  # a template for the title, e.g. "{name}"; default: none
    metadata_columns: Sequence[str] = ()  # stored in Document.metadata (filters: meta.<column>)
    _rejected: list[tuple[str, FileProblem]] = field(default_factory=list, init=False, repr=False)  # (row, why)
    _reader: _Reader | None = field(default=None, init=False, repr=False)  # opened, not yet read
    _readers: list[_Reader] = field(default_factory=list, init=False, repr=False)  # every one not closed yet

    # -- what the documents are called ------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """What every document source of this SqlSource starts with (`--sync` removes the rest under it)."""
        self._check_choice()
        if self.table is not None:
            what = quote(self.table, safe="")
        else:
            assert self.query is not None
            what = "query:" + hashlib.sha256(" ".join(self.query.split()).encode()).hexdigest()[:12]
        return f"{self.shown_url}/{what}#"

    @property
    def shown_url(self) -> str:
        """The URL as sources show it: no password, no connection options, the dialect without its driver."""
        url = self._url().set(drivername=self._url().get_backend_name(), query={})
        if url.get_backend_name() == "sqlite":
            url = url.set(database=str(self._sqlite_path()))
        return url.render_as_string(hide_password=True)

    @property
    def problems(self) -> list[str]:
        """Rows of the last read that did not become documents: "row <key>: <reason>"."""
        return [f"{row}: {problem.reason}" for row, problem in self._rejected]

    @property
    def rejected(self) -> list[FileProblem]:
        """The same rows as `problems`, each under the source its document has (or would have)."""
        return [problem for _, problem in self._rejected]

    # -- reading ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and check the table or query, the key and the templates, reading no row (SqlSourceError)."""
        if self._reader is None:
            self._reader = self._open()
            self._readers.append(self._reader)

    def close(self) -> None:
        """Release the connections of reads that did not run to the end (an ingest that failed or was stopped)."""
        self._reader = None
        while self._readers:
            self._readers.pop().close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def documents(self) -> Iterator[Document]:
        """The rows as documents, streamed. Checks everything first, so a SqlSourceError comes before any row."""
        self.open()
        reader, self._reader = self._reader, None
        assert reader is not None
        self._rejected = []
        return self._documents(reader)

    def items(self) -> Iterator[Document | FileProblem]:
        """`documents()` with each rejected row as a FileProblem, as soon as it is met (for Ingestor.run_documents)."""
        sent = 0
        for document in self.documents():
            yield from (problem for _, problem in self._rejected[sent:])
            sent = len(self._rejected)
            yield document
        yield from (problem for _, problem in self._rejected[sent:])

    def _documents(self, reader: _Reader) -> Iterator[Document]:
        prefix = self.prefix
        keys = reader.key_columns
        text_fields = template_fields(self.template) if self.template else []
        seen: set[str] = set()
        try:
            for number, row in enumerate(reader.result, start=1):
                values = dict(zip(reader.columns, row, strict=True))
                key_values = [values[c] for c in keys]
                nulls = [c for c, v in zip(keys, key_values, strict=True) if v is None]
                if nulls:
                    which = f"column {nulls[0]} is" if len(nulls) == 1 else f"columns {', '.join(nulls)} are"
                    label = f"row number {number} (no key)"
                    self._reject(label, f"{prefix}({label})", f"the id {which} NULL")
                    continue
                key = ",".join(quote(_key_part(v), safe="") for v in key_values)
                source = prefix + key
                if source in seen:
                    self._reject(f"row {key}", source, "another row has the same key (the first one was ingested)")
                    continue
                seen.add(source)
                document = self._document(f"row {key}", source, values, text_fields)
                if document is not None:
                    yield document
        except sa.exc.SQLAlchemyError as exc:
            raise SqlSourceError(f"reading {prefix.rstrip('#')} failed: {_error_text(exc)}") from None
        finally:
            reader.close()
            self._readers = [r for r in self._readers if r is not reader]

    def _document(self, row: str, source: str, values: dict[str, Any], text_fields: list[str]) -> Document | None:
        shown = {name: _text_value(value) for name, value in values.items()}
        try:
            if self.template:
                text = _FORMATTER.vformat(self.template, (), shown)
            else:
                text = "\n".join(f"{name}: {v}" for name, v in shown.items() if _filled(v))
            title = (_FORMATTER.vformat(self.title, (), shown).strip() or None) if self.title else None
        except (ValueError, TypeError) as exc:  # a format spec that does not fit the value, like {name:d}
            self._reject(row, source, f"template: {exc}")
            return None
        # A template whose columns are all empty leaves only its own words, which say nothing about the row.
        if not text.strip() or (text_fields and not any(_filled(shown[name]) for name in text_fields)):
            empty = ", ".join(text_fields) if text_fields else "every column"
            self._reject(row, source, f"empty text: {empty} {'is' if len(text_fields) == 1 else 'are'} empty")
            return None
        metadata: dict[str, Any] = {"table": self.table} if self.table is not None else {}
        for name in self.metadata_columns:
            value = values[name]
            if value is not None and not isinstance(value, _BINARY):
                metadata[name] = json_safe(value)
        return Document(source, "sql", text, [Section(text, 0)], title=title, metadata=metadata)

    def _reject(self, row: str, source: str, reason: str) -> None:
        self._rejected.append((row, FileProblem(source, reason)))

    # -- opening ----------------------------------------------------------------------------------

    def _check_choice(self) -> None:
        if (self.table is None) == (self.query is None):
            raise SqlSourceError("give exactly one of a table or a query (--table / --query)")
        if self.query is not None and not self.query.strip():
            raise SqlSourceError("the query is empty")
        if self.table is not None and not self.table.strip():
            raise SqlSourceError("the table name is empty")

    def _url(self) -> URL:
        try:
            return make_url(self.url)
        except (sa.exc.ArgumentError, ValueError):
            # Not repeated in the message: it may hold a password.
            raise SqlSourceError(
                "not a database URL (expected e.g. sqlite:///shop.db or postgresql://user@host/dbname)"
            ) from None

    def _sqlite_path(self) -> Path:
        database = self._url().database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise SqlSourceError("give a SQLite database file (an in-memory or URI database has nothing to ingest)")
        return Path(database).expanduser().resolve()

    def _engine(self) -> Engine:
        url = self._url()
        try:
            if url.get_backend_name() != "sqlite":
                return sa.create_engine(url, poolclass=NullPool)
            path = self._sqlite_path()
            if not path.exists():
                raise SqlSourceError(f"no such database file: {path}")
            if not path.is_file():
                raise SqlSourceError(f"not a database file: {path}")
            return sa.create_engine(url.set(database=str(path)), creator=read_only_sqlite(path), poolclass=NullPool)
        except sa.exc.NoSuchModuleError as exc:
            raise SqlSourceError(f"cannot use {url.drivername} databases: {_error_text(exc)}") from None
        except ImportError as exc:
            raise SqlSourceError(f"cannot use {url.drivername} databases: {exc} (install its driver)") from None
        except sa.exc.ArgumentError as exc:
            raise SqlSourceError(f"bad database URL: {_error_text(exc)}") from None

    def _open(self) -> _Reader:
        self._check_choice()
        for what, template in (("template", self.template), ("title", self.title)):
            if template is not None:
                template_fields(template, what)  # bad syntax fails before connecting
        engine = self._engine()
        where = self.shown_url
        try:
            connection = engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise SqlSourceError(f"cannot open {where}: {_error_text(exc)}") from None
        try:
            if engine.dialect.name == "postgresql":
                try:
                    connection.execution_options(postgresql_readonly=True)
                except NotImplementedError:  # a driver without read-only transactions: the rollback still holds
                    pass
            connection.begin()
            if self.table is not None:
                result, columns, keys = self._select_table(connection, where)
            else:
                result, columns, keys = self._run_query(connection, where)
        except SqlSourceError:
            connection.close()
            engine.dispose()
            raise
        except sa.exc.SQLAlchemyError as exc:
            connection.close()
            engine.dispose()
            raise SqlSourceError(f"{where}: {_error_text(exc)}") from None
        return _Reader(engine, connection, result, columns, keys)

    def _select_table(self, connection: Connection, where: str) -> tuple[Result[Any], list[str], list[str]]:
        assert self.table is not None
        inspector = sa.inspect(connection)
        name, schema = self.table, None
        if not inspector.has_table(name) and "." in name:
            schema, name = name.rsplit(".", 1)
        if not inspector.has_table(name, schema=schema):
            tables = sorted(inspector.get_table_names() + inspector.get_view_names())
            listed = ", ".join(tables[:30]) + (", ..." if len(tables) > 30 else "") if tables else "none"
            raise SqlSourceError(f"no table {self.table!r} in {where} (tables: {listed})")
        columns = [c["name"] for c in inspector.get_columns(name, schema=schema)]
        keys = list(self.id_columns)
        if not keys:
            keys = list(inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or [])
            if not keys:
                raise SqlSourceError(
                    f"table {self.table} has no primary key: name the columns that identify a row "
                    f"(--id COLUMN; columns: {', '.join(columns)})"
                )
        self._check_columns(columns, keys)  # before building a statement on names that do not exist
        table = sa.table(name, *(sa.column(c) for c in columns), schema=schema)
        statement = sa.select(table).order_by(*(table.c[k] for k in keys))
        result = connection.execute(statement, execution_options={"yield_per": FETCH_ROWS})
        return result, columns, keys

    def _run_query(self, connection: Connection, where: str) -> tuple[Result[Any], list[str], list[str]]:
        assert self.query is not None
        if not self.id_columns:
            raise SqlSourceError("a query needs the columns that identify a row (--id COLUMN, repeatable)")
        # Sent as written: no bind parameters (':name') or percent signs are interpreted on the way.
        options = {"yield_per": FETCH_ROWS, "no_parameters": True}
        try:
            result = connection.exec_driver_sql(self.query, execution_options=options)
        except sa.exc.SQLAlchemyError as exc:
            raise SqlSourceError(f"the query failed on {where}: {_error_text(exc)}") from None
        if not result.returns_rows:
            result.close()
            raise SqlSourceError("the query returns no rows (it must be a SELECT)")
        columns = list(result.keys())
        try:
            self._check_columns(columns, list(self.id_columns))
        except SqlSourceError:
            result.close()
            raise
        return result, columns, list(self.id_columns)

    def _check_columns(self, columns: list[str], keys: list[str]) -> None:
        """Every column the key, the templates and the metadata name must exist: say which does not."""
        what = self.table if self.table is not None else "the query"
        known = set(columns)
        listed = ", ".join(columns)
        wanted = [("id column", c) for c in keys] + [("metadata column", c) for c in self.metadata_columns]
        for kind, template in (("template field", self.template), ("title field", self.title)):
            if template is not None:
                wanted += [(kind, name) for name in template_fields(template, kind.split()[0])]
        for kind, name in wanted:
            if name not in known:
                raise SqlSourceError(f"{kind} {name!r} is not a column of {what} (columns: {listed})")
