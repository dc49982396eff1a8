"""Runs one sql_query statement on a SQLite file in a child process, so that the parent can kill it on time.

SQLite checks for interruption between VM instructions, not inside a function call, so neither the progress handler
nor `Connection.interrupt()` stops `printf('%.*c', 999999999, 'x')`: measured on SQLite 3.40, it runs for seconds
after the interrupt. A child process can always be killed. Starting one costs about 30 ms, because this module needs
only the standard library: the parent runs it by path with `python -I -S`, and talks to it in JSON (never pickle).

In the child, each guard still assumes the others failed: the file is opened `mode=ro` with `query_only`; SQLite's
limits cap the size of any value it builds (`randomblob(999999999)` fails at once instead of allocating 1 GB), the
length of the SQL, the depth of expressions, attached databases (none) and more; the authorizer allows only SELECT,
reads of allowed tables and functions not denied; the progress handler stops a long statement at the deadline; and
`setrlimit` caps the child's memory and CPU time, in case all of that is not enough.

Protocol: one JSON request on stdin (see `run`), one JSON reply on stdout: {"columns", "rows", "truncated"} or
{"error": "refused" | "timeout" | "memory" | "too_large", "message"}. A bytes value is {"bytes": base64}.
"""

from __future__ import annotations

import base64
import json
import resource
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

MAX_VALUE_BYTES = 10_000_000  # a string or blob SQLite builds or reads; beyond: "string or blob too big"
MAX_RESULT_BYTES = 32_000_000  # the JSON reply; a result that large is of no use to a model anyway
MEMORY_BYTES = 512 << 20  # the child's address space (RLIMIT_AS); Python and SQLite start with a few tens of MB

# Every limit that a statement can reach, each far above what a query for a model needs.
LIMITS: dict[int, int] = {
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 200,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,
    sqlite3.SQLITE_LIMIT_VDBE_OP: 100_000,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 100,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1_000,
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 100,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 0,
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,
}

# Tables SQLite may have without listing them in sqlite_master.
INTERNAL_TABLES = frozenset(
    {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema", "sqlite_sequence"}
    | {f"sqlite_stat{n}" for n in range(1, 5)}
)

_PROGRESS_STEPS = 1000  # SQLite VM instructions between deadline checks

Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


def connect(path: Path, limits: dict[int, int] = LIMITS) -> sqlite3.Connection:
    """The file, read-only (`mode=ro`: nothing written, a missing file never created), with `limits` set."""
    conn = sqlite3.connect("file:" + quote(str(path), safe="/") + "?mode=ro", uri=True)
    conn.execute("PRAGMA query_only = ON")
    for category, value in limits.items():
        conn.setlimit(category, value)
    return conn


def authorizer(allowed: set[str], in_schema: set[str], denied_functions: Iterable[str]) -> Authorizer:
    """SELECT and reads of allowed tables in `main`; everything else (ATTACH, PRAGMA, writes, DDL) is denied."""
    denied = {name.lower() for name in denied_functions}

    def authorize(action: int, arg1: str | None, arg2: str | None, db_name: str | None, _source: str | None) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            table = (arg1 or "").lower()
            if db_name == "main" and table in allowed:
                return sqlite3.SQLITE_OK
            # A FROM item none of whose columns is used (count(*)) comes with no column and no database. It may be a
            # CTE or subquery, harmless; if it is a table, even its row count is only for allowed ones.
            if db_name is None and not arg2 and (table in allowed or table not in in_schema):
                return sqlite3.SQLITE_OK
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if (arg2 or "").lower() in denied else sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return authorize


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Run request["sql"] on request["path"]; keys: allowed (lower-case table names), denied_functions, max_rows,
    timeout_s. Returns the reply (see the module docstring)."""
    conn = connect(Path(request["path"]))
    try:
        # Read before the authorizer is on, which would deny reading sqlite_master.
        in_schema = {row[0].lower() for row in conn.execute("SELECT name FROM sqlite_master")}
        allowed, denied = set(request["allowed"]), request["denied_functions"]
        conn.set_authorizer(authorizer(allowed, in_schema | INTERNAL_TABLES, denied))
        deadline = time.monotonic() + float(request["timeout_s"])
        stopped = False

        def progress() -> int:
            nonlocal stopped
            stopped = time.monotonic() > deadline
            return int(stopped)  # non-zero aborts the statement

        conn.set_progress_handler(progress, _PROGRESS_STEPS)
        max_rows = int(request["max_rows"])
        try:
            cursor = conn.execute(request["sql"])
            if cursor.description is None:
                return {"columns": [], "rows": [], "truncated": False}
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchmany(max_rows + 1)
        except sqlite3.Error as e:
            if stopped:
                return {"error": "timeout", "message": ""}
            message = str(e)
            if message == "out of memory":  # SQLite's allocation failed under RLIMIT_AS
                raise MemoryError from None
            if message == "string or blob too big":
                message += f" (a value can have at most {MAX_VALUE_BYTES:,} bytes here)"
            return {"error": "refused", "message": message}
        shown = [[_value(v) for v in row] for row in rows[:max_rows]]
        return {"columns": columns, "rows": shown, "truncated": len(rows) > max_rows}
    finally:
        conn.close()


def _value(value: Any) -> Any:
    return {"bytes": base64.b64encode(value).decode("ascii")} if isinstance(value, bytes) else value


def decode_value(value: Any) -> Any:
    """A value of a reply's rows as SQLite returned it (the inverse of the encoding here)."""
    return base64.b64decode(value["bytes"]) if isinstance(value, dict) else value


def _cap_resources(timeout_s: float) -> None:
    """The last guard: no more memory than MEMORY_BYTES, and no more CPU than the timeout (SIGXCPU ends the child
    even if the parent that should kill it is gone)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    cpu = int(timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


def main() -> int:
    request = json.load(sys.stdin)
    _cap_resources(float(request["timeout_s"]))
    try:
        text = json.dumps(run(request))
    except sqlite3.Error as e:  # opening the file or reading its schema
        text = json.dumps({"error": "refused", "message": str(e)})
    except MemoryError:
        text = json.dumps({"error": "memory", "message": f"more than {MEMORY_BYTES >> 20} MB"})
    if len(text) > MAX_RESULT_BYTES:
        text = json.dumps({"error": "too_large", "message": f"more than {MAX_RESULT_BYTES:,} bytes"})
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
