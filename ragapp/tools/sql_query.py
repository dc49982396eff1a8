"""Read-only SQL for an agent: one SELECT at a time on allowed tables, with several independent guards.

The model writes the SQL, so every guard assumes the one before it has failed:

1. Parser (sqlglot, in the database's dialect): exactly one statement, a query (SELECT, set operations of
   selects, WITH ... SELECT) with no data-modifying or session-changing node anywhere in its tree, reading only
   allowed tables, calling no function from DENIED_FUNCTIONS, and no table-valued functions in FROM. Text longer
   than MAX_SQL_CHARS or nested deeper than MAX_NESTING is refused before parsing: sqlglot's parser recurses.
2. Connection:
   - SQLite: each query runs in a child process (`sqlite_worker`), killed if it outlives the timeout: SQLite
     cannot interrupt a long function call such as `printf('%.*c', 999999999, 'x')`. There the file is opened
     with `mode=ro` (nothing can be written, and a missing file is never created) and `PRAGMA query_only = ON`;
     SQLite's limits cap every value it builds (`randomblob(999999999)` fails at once) and more; an authorizer
     permits only SELECT, reads of allowed tables in `main`, recursive CTEs and functions not denied (ATTACH,
     PRAGMA, writes, DDL and transactions are denied); a progress handler stops a statement at the deadline; and
     the child's memory and CPU time are capped. An allowed view works only if the tables it reads are allowed
     too: the authorizer sees the underlying tables, and it cannot tell a view from a CTE of the same name.
   - PostgreSQL: each query runs in a READ ONLY transaction with `SET LOCAL statement_timeout` and is always
     rolled back. The driver may send a string holding several statements in one go, so a statement that got
     past the parser could end that transaction; connect as a role with SELECT-only grants to close that too.
   - Other dialects: SQLAlchemy has no portable read-only switch, so only the parser guards them (the
     transaction is still rolled back) and there is no timeout; connect as a role with SELECT-only grants.
3. Result size: at most max_rows + 1 rows are fetched (server-side cursors where the driver has them);
   `QueryResult.to_text` shows bytes as their length and cuts long strings.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import sqlglot
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, CompileError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.types import NullType
from sqlglot import exp
from sqlglot.tokens import TokenType

from ragapp.connectors.sql import read_only_sqlite
from ragapp.errors import ConfigError
from ragapp.tools import sqlite_worker

log = logging.getLogger(__name__)

# Functions that touch files, the network, other sessions or server settings, or just wait.
DENIED_FUNCTIONS = frozenset(
    {
        "load_extension",
        "readfile",
        "writefile",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_sleep",
        "lo_import",
        "lo_export",
        "dblink",
        "dblink_exec",
        "set_config",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "fts3_tokenizer",  # SQLite: returns the address of a tokenizer (a pointer leak) or installs one
    }
)

MAX_SQL_CHARS = 20_000
# Levels of parentheses. sqlglot's parser takes about 20 Python frames per level, and the agent loop that calls the
# tool is itself deep, so 40 levels can exhaust Python's recursion limit; no useful query comes close to 25.
MAX_NESTING = 25
# Time for the SQLite child to start (about 30 ms) on a loaded machine, on top of the query's own timeout.
_WORKER_START_S = 1.0

# Nodes that change data, schema, session or transaction state, or that sqlglot could not understand (Command).
# Looked up by name so that a node missing from this sqlglot version does not break the import.
_FORBIDDEN_NODE_NAMES = [
    "Insert",
    "Update",
    "Delete",
    "Merge",
    "Copy",
    "LoadData",
    "TruncateTable",
    "Create",
    "Drop",
    "Alter",
    "Command",
    "Pragma",
    "Attach",
    "Detach",
    "Set",
    "Transaction",
    "Commit",
    "Rollback",
    "Use",
    "Analyze",
    "Grant",
    "Revoke",
    "Cache",
    "Uncache",
    "Refresh",
    "Kill",
    "Lock",
    "Into",
    "Describe",
    "Show",
    "Declare",
    "Execute",
    "Summarize",
    "Export",
    "Comment",
    "Install",
]
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name) for name in _FORBIDDEN_NODE_NAMES if isinstance(getattr(exp, name, None), type)
)
_SET_OPERATIONS: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name) for name in ("SetOperation", "Union", "Intersect", "Except") if hasattr(exp, name)
)

# SQLAlchemy backend name -> sqlglot dialect, where they differ.
_SQLGLOT_DIALECTS = {"postgresql": "postgres", "mssql": "tsql", "mariadb": "mysql"}

_MAX_CELL_CHARS = 500


class SqlRefused(Exception):
    """The statement was not run; the message says why (shown to the model and the user)."""


@dataclass
class QueryResult:
    """Values as the database returned them; `to_text` is what the model sees."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than max_rows

    def to_text(self) -> str:
        """Compact text for a language model: one line per row, bytes and long strings shortened."""
        lines = [" | ".join(self.columns)] if self.columns else []
        lines += [" | ".join(_cell(value) for value in row) for row in self.rows]
        if not self.rows:
            lines.append("(no rows)")
        elif self.truncated:
            lines.append(f"(first {len(self.rows)} rows shown; more exist)")
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    text = str(value).replace("\r", "\\r").replace("\n", "\\n")  # one row, one line
    return text if len(text) <= _MAX_CELL_CHARS else text[:_MAX_CELL_CHARS] + "…"


class ReadOnlyDatabase:
    """One configured database, read through all the guards in the module docstring."""

    def __init__(self, url: str, tables: Sequence[str] = (), max_rows: int = 50, timeout_s: float = 5.0) -> None:
        if max_rows < 1:
            raise ConfigError(f"sql_query: max_rows must be at least 1 (got {max_rows})")
        if timeout_s <= 0:
            raise ConfigError(f"sql_query: timeout_s must be positive (got {timeout_s})")
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(
                "sql_query: the database URL is not a SQLAlchemy URL "
                "(expected e.g. sqlite:///path/to/file.db or postgresql+psycopg://user@host/dbname)"
            ) from None
        self._url_text = parsed.render_as_string(hide_password=True)
        self._backend = parsed.get_backend_name()
        name = _SQLGLOT_DIALECTS.get(self._backend, self._backend)
        self._dialect: str | None = name if sqlglot.Dialect.get(name) is not None else None
        self._sqlite_path: Path | None = None  # SQLite: queries run in a child process on this file
        if self._backend == "sqlite":
            self._sqlite_path = self._sqlite_file(parsed)
            # Only for the schema (PRAGMA table_info, sqlite_master): the queries themselves run in `sqlite_worker`.
            # NullPool: a fresh connection each time (SQLite opens in microseconds).
            self._engine = create_engine("sqlite://", creator=read_only_sqlite(self._sqlite_path), poolclass=NullPool)
        else:
            self._engine = self._server_engine(parsed)
            if self._backend != "postgresql":
                log.warning("sql_query: no read-only connection for %s; only the SQL parser guards it", self._url_text)
        if isinstance(tables, str):  # one name, not a sequence of letters
            tables = [tables]
        try:
            # lower-case name (schema.table for other schemas) -> (schema, name as the database spells it)
            self._allowed = self._resolve_tables(tables)
        except BaseException:
            self.close()
            raise

    # -- set-up --------------------------------------------------------------------------------------------

    @staticmethod
    def _sqlite_file(parsed: URL) -> Path:
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError(
                "sql_query: an in-memory SQLite database would be empty; give the path of an existing file"
            )
        path = Path(database).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"sql_query: the SQLite database {path} does not exist")
        return path

    def _server_engine(self, parsed: URL) -> Engine:
        try:
            return create_engine(parsed, poolclass=NullPool)
        except (ArgumentError, ImportError) as e:
            raise ConfigError(f"sql_query: cannot use the database {self._url_text}: {e}") from None

    def _resolve_tables(self, tables: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        try:
            insp = inspect(self._engine)
            present = insp.get_table_names() + insp.get_view_names()
        except SQLAlchemyError as e:
            raise ConfigError(f"sql_query: cannot read the database {self._url_text}: {_db_message(e)}") from None
        by_lower = {name.lower(): name for name in present}
        if not tables:
            return {name.lower(): (None, name) for name in sorted(present)}
        allowed: dict[str, tuple[str | None, str]] = {}
        unknown: list[str] = []
        for entry in tables:
            schema, _, name = entry.strip().rpartition(".")
            if self._backend == "sqlite" and schema.lower() == "main":
                schema = ""
            if schema:
                try:
                    in_schema = {n.lower(): n for n in insp.get_table_names(schema) + insp.get_view_names(schema)}
                except SQLAlchemyError:
                    in_schema = {}
                if name.lower() in in_schema:
                    allowed[f"{schema}.{name}".lower()] = (schema, in_schema[name.lower()])
                    continue
            elif name.lower() in by_lower:
                allowed[name.lower()] = (None, by_lower[name.lower()])
                continue
            unknown.append(entry)
        if unknown:
            raise ConfigError(
                f"sql_query tables: {', '.join(map(repr, unknown))} not found in {self._url_text} "
                f"(it has: {', '.join(sorted(present)) or 'no tables'})"
            )
        return allowed

    # -- public --------------------------------------------------------------------------------------------

    def describe(self) -> str:
        """The allowed tables and their columns, one line each, for the tool description."""
        insp = inspect(self._engine)
        lines = []
        for schema, name in self._allowed.values():
            columns = []
            for column in insp.get_columns(name, schema=schema):
                kind = self._type_name(column["type"])
                columns.append(f"{column['name']} {kind}" if kind else str(column["name"]))
            lines.append(f"{schema + '.' if schema else ''}{name}({', '.join(columns)})")
        return "\n".join(lines)

    def check(self, sql: str) -> None:
        """The parser guard: raises SqlRefused unless `sql` is one query on allowed tables."""
        if len(sql) > MAX_SQL_CHARS:
            raise SqlRefused(f"the SQL is too long: {len(sql):,} characters (the limit is {MAX_SQL_CHARS:,})")
        try:
            self._check_nesting(sql)
            parsed = sqlglot.parse(sql, read=self._dialect)
        except sqlglot.errors.ParseError as e:
            raise SqlRefused(f"could not parse the SQL: {_parse_error_text(e)}") from None
        except sqlglot.errors.SqlglotError as e:
            raise SqlRefused(f"could not parse the SQL: {e}") from None
        except RecursionError:  # nesting without parentheses, like NOT NOT NOT ... or CASE WHEN CASE WHEN ...
            raise SqlRefused("the SQL is nested too deeply to check: write it with fewer levels") from None
        try:
            self._check_tree(parsed)
        except RecursionError:
            raise SqlRefused("the SQL is nested too deeply to check: write it with fewer levels") from None

    def _check_nesting(self, sql: str) -> None:
        """Count parentheses on the tokens (not inside strings or comments); the tokenizer does not recurse."""
        depth = deepest = 0
        for token in sqlglot.tokenize(sql, read=self._dialect):
            if token.token_type == TokenType.L_PAREN:
                depth += 1
                deepest = max(deepest, depth)
            elif token.token_type == TokenType.R_PAREN:
                depth -= 1
        if deepest > MAX_NESTING:
            raise SqlRefused(
                f"the SQL nests parentheses {deepest} levels deep (the limit is {MAX_NESTING}): "
                "use a WITH clause or fewer sub-selects"
            )

    def _check_tree(self, parsed: list[Any]) -> None:
        """The rest of the parser guard, on sqlglot's statements (None for an empty one)."""
        statements = [s for s in parsed if s is not None]
        if not statements:
            raise SqlRefused("empty query: send one SELECT statement")
        if len(statements) > 1:
            raise SqlRefused(f"one statement at a time (got {len(statements)})")
        root = statements[0]
        query = root.unnest() if isinstance(root, exp.Subquery) else root
        if not isinstance(query, (exp.Select, *_SET_OPERATIONS)):
            raise SqlRefused(f"only SELECT statements are allowed (got {_statement_name(root)})")
        for node in root.walk():
            if isinstance(node, _FORBIDDEN_NODES):
                raise SqlRefused(f"only SELECT statements are allowed (found {_statement_name(node)} inside)")
            if isinstance(node, exp.Func):
                denied = _function_names(node) & DENIED_FUNCTIONS
                if denied:
                    raise SqlRefused(f"function {min(denied)!r} is not allowed")
            if isinstance(node, exp.Table):
                self._check_table(node)

    def query(self, sql: str) -> QueryResult:
        """Check `sql`, then run it read-only; every failure is a SqlRefused the model can act on."""
        self.check(sql)
        return self._execute(sql)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- guards below the parser -----------------------------------------------------------------------------

    def _check_table(self, table: exp.Table) -> None:
        if not isinstance(table.this, exp.Identifier):
            # Table-valued functions: in SQLite even json_each makes the authorizer see a write to sqlite_master.
            func = table.this
            name = func.name if isinstance(func, exp.Anonymous) else getattr(func, "key", "?")
            raise SqlRefused(f"table function {name.lower()!r} is not allowed in FROM")
        name, db, catalog = table.name, table.db, table.catalog
        if not db and not catalog and name.lower() in _visible_ctes(table):
            return
        written = ".".join(part for part in (catalog, db, name) if part)
        if self._backend == "sqlite" and db.lower() == "main" and not catalog:
            db = ""
        key = f"{db}.{name}".lower() if db else name.lower()
        if catalog or key not in self._allowed:
            allowed = ", ".join(f"{s}.{n}" if s else n for s, n in self._allowed.values()) or "none"
            raise SqlRefused(f"table {written!r} is not allowed (allowed: {allowed})")

    def _execute(self, sql: str) -> QueryResult:
        """Run `sql` on the guarded connection; the parser guard is not applied here (tests call this directly)."""
        if self._sqlite_path is not None:
            return self._execute_sqlite(sql, self._sqlite_path)
        options: dict[str, Any] = {"no_parameters": True}  # the SQL goes to the driver as written
        if self._engine.dialect.supports_server_side_cursors:
            options.update(stream_results=True, max_row_buffer=self.max_rows + 1)
        try:
            conn = self._engine.connect()
        except DBAPIError as e:
            raise SqlRefused(f"cannot reach the database: {_db_message(e)}") from e
        with conn:
            if self._backend == "postgresql":
                conn.execution_options(postgresql_readonly=True)  # before the transaction begins
            timed_out: Callable[[], bool] = _never  # until the deadline is set
            try:
                with self._deadline(conn) as timed_out:
                    result = conn.exec_driver_sql(sql, execution_options=options)
                    if not result.returns_rows:
                        return QueryResult([], [], False)
                    columns = list(result.keys())
                    rows = [tuple(row) for row in result.fetchmany(self.max_rows + 1)]
                    result.close()
            except DBAPIError as e:
                if timed_out() or _is_statement_timeout(e):
                    raise SqlRefused(f"query took longer than {self.timeout_s:g} s and was stopped") from e
                raise SqlRefused(f"the database refused the query: {_db_message(e)}") from e
            finally:
                conn.rollback()
        return QueryResult(columns, rows[: self.max_rows], len(rows) > self.max_rows)

    def _execute_sqlite(self, sql: str, path: Path) -> QueryResult:
        """Run `sql` in a `sqlite_worker` child, killed if it is still running shortly after the timeout."""
        request = {
            "path": str(path),
            "sql": sql,
            "allowed": sorted(self._allowed),
            "denied_functions": sorted(DENIED_FUNCTIONS),
            "max_rows": self.max_rows,
            "timeout_s": self.timeout_s,
        }
        # -I -S: no environment variables, user site or site-packages; the worker needs only the standard library.
        command = [sys.executable, "-I", "-S", sqlite_worker.__file__]
        stopped = SqlRefused(f"query took longer than {self.timeout_s:g} s and was stopped")
        try:
            done = subprocess.run(
                command,
                input=json.dumps(request),
                capture_output=True,
                text=True,
                encoding="utf-8",
                timeout=self.timeout_s + _WORKER_START_S,  # on expiry the child is killed (SIGKILL) and reaped
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise stopped from None
        except OSError as e:
            raise SqlRefused(f"cannot start the SQLite query process: {e}") from None
        try:
            reply = json.loads(done.stdout)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            if done.returncode < 0:  # a signal: SIGXCPU at the CPU limit, or the parent's SIGKILL
                raise stopped
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise SqlRefused(f"the SQLite query process failed: {last}")
        error = reply.get("error")
        if error == "timeout":
            raise stopped
        if error == "memory":
            raise SqlRefused(f"the query needed too much memory ({reply['message']}) and was stopped")
        if error == "too_large":
            raise SqlRefused(f"the result is too large ({reply['message']}): select fewer rows or shorter columns")
        if error is not None:
            raise SqlRefused(f"the database refused the query: {reply['message']}")
        rows = [tuple(sqlite_worker.decode_value(v) for v in row) for row in reply["rows"]]
        return QueryResult(list(reply["columns"]), rows, bool(reply["truncated"]))

    @contextmanager
    def _deadline(self, conn: Connection) -> Iterator[Callable[[], bool]]:
        """Stops a PostgreSQL statement after timeout_s (server-side); yields a function that says whether it did."""
        stopped = False
        if self._backend == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(self.timeout_s * 1000))}")
        yield lambda: stopped

    @staticmethod
    def _type_name(kind: Any) -> str:
        if isinstance(kind, NullType):
            return ""
        try:
            return str(kind)
        except CompileError:  # a type SQLAlchemy cannot render generically; the column name still helps
            return ""


def _never() -> bool:
    return False


def _visible_ctes(node: exp.Expression) -> set[str]:
    """Names of the CTEs whose scope contains `node` (a WITH on any enclosing query)."""
    names: set[str] = set()
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.Query):
            names.update(cte.alias_or_name.lower() for cte in parent.ctes)
        parent = parent.parent
    return names


def _function_names(func: exp.Func) -> set[str]:
    if isinstance(func, exp.Anonymous):
        return {func.name.lower()}
    return {name.lower() for name in type(func).sql_names()} | {func.key.lower()}


def _statement_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    kind = node.args.get("kind")
    name = node.key.upper()
    return f"{name} {kind.upper()}" if isinstance(kind, str) and kind else name


_TOKEN_REPR = re.compile(r"<Token token_type: TokenType\.(\w+), text: ([^,]*),[^>]*>")


def _parse_error_text(error: sqlglot.errors.ParseError) -> str:
    if not error.errors:
        return str(error)
    first = error.errors[0]
    # sqlglot names tokens by their repr, e.g. "Expected table name but got <Token token_type: ...>".
    description = _TOKEN_REPR.sub(
        lambda m: "the end of the query" if m[1] == "SENTINEL" else repr(m[2]), str(first.get("description"))
    )
    where = f"line {first.get('line')}, column {first.get('col')}"
    near = first.get("highlight")
    return f"{description} ({where}{f', near {near!r}' if near else ''})"


def _db_message(error: SQLAlchemyError) -> str:
    """The database's own message, without SQLAlchemy's SQL echo and background link."""
    orig = getattr(error, "orig", None)
    return str(orig if orig is not None else error).strip()


def _is_statement_timeout(error: DBAPIError) -> bool:
    orig = error.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3 / psycopg2
    return code == "57014"  # query_canceled: statement_timeout


class _SqlQueryArgs(BaseModel):
    query: str = Field(description="One SQL SELECT statement.")


def sql_query_tool(db: ReadOnlyDatabase) -> BaseTool:
    """The agent's tool; refusals come back to the model as the tool's answer so it can correct the query."""

    def run(query: str) -> str:
        try:
            return db.query(query).to_text()
        except SqlRefused as reason:
            raise ToolException(str(reason)) from reason
        except (RecursionError, MemoryError, SQLAlchemyError) as e:  # a guard that did not see this coming
            log.warning("sql_query failed on %r", query[:200], exc_info=True)
            raise ToolException(f"the query could not be run ({type(e).__name__}): try a simpler query") from e

    return StructuredTool.from_function(
        func=run,
        name="sql_query",
        description="Run one read-only SQL SELECT on the database and get the rows. Tables: " + db.describe(),
        args_schema=_SqlQueryArgs,
        handle_tool_error=True,
    )
