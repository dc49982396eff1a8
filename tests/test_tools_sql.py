"""sql_query: an agent's SQL stays one read-only SELECT on allowed tables, and each guard holds on its own."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from sqlalchemy import create_engine, make_url, text

from ragapp.errors import ConfigError
from ragapp.store import database_url
from ragapp.tools.sql_query import QueryResult, ReadOnlyDatabase, SqlRefused, sql_query_tool
from tests.support import drop_database, new_database

CUSTOMERS = [(1, "Ada", "London"), (2, "Grace", "New York"), (3, "Edsger", "Austin")]
ORDERS = [(1, 1, 12.5), (2, 1, 7.5), (3, 2, 30.0), (4, 3, 1.25), (5, 2, 0.75)]
SECRETS = [(1, "hunter2"), (2, "correct horse")]
ALLOWED = "(allowed: customers, orders)"


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")  # a test file need not survive a power cut
    conn.executescript(
        """
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers (id), total NUMERIC);
        CREATE TABLE secrets (id INTEGER PRIMARY KEY, token TEXT);
        """
    )
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", CUSTOMERS)
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", ORDERS)
    conn.executemany("INSERT INTO secrets VALUES (?, ?)", SECRETS)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def db(db_file: Path) -> Iterator[ReadOnlyDatabase]:
    database = ReadOnlyDatabase(f"sqlite:///{db_file}", tables=["customers", "orders"])
    yield database
    database.close()


def snapshot(path: Path) -> tuple[str, list[str]]:
    """The file's bytes and its directory: a refused statement must leave both as they were (no journal, no attach)."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(p.name for p in path.parent.iterdir())


def refused(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- what works -------------------------------------------------------------------------------------------------


def test_select_with_join_returns_the_rows(db: ReadOnlyDatabase) -> None:
    result = db.query(
        "SELECT c.name, count(*) AS n, sum(o.total) AS spent FROM customers c "
        "JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY spent DESC"
    )
    names = {cid: name for cid, name, _ in CUSTOMERS}
    expected = {}
    for _, cid, total in ORDERS:
        n, spent = expected.get(names[cid], (0, 0.0))
        expected[names[cid]] = (n + 1, spent + total)
    assert result.columns == ["name", "n", "spent"]
    assert result.rows == sorted(((k, *v) for k, v in expected.items()), key=lambda r: -r[2])
    assert result.rows[0] == ("Grace", 2, 30.75)
    assert not result.truncated


def test_main_schema_counts_as_the_table(db: ReadOnlyDatabase) -> None:
    assert db.query("SELECT count(*) FROM main.orders").rows == [(len(ORDERS),)]


def test_recursive_cte_is_allowed(db: ReadOnlyDatabase) -> None:
    sql = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) SELECT sum(x) FROM n"
    assert db.query(sql).rows == [(15,)]


def test_row_limit_truncates(db_file: Path) -> None:
    conn = sqlite3.connect(db_file)
    conn.executemany("INSERT INTO orders (customer_id, total) VALUES (?, ?)", [(1, i) for i in range(200)])
    conn.commit()
    conn.close()
    with ReadOnlyDatabase(f"sqlite:///{db_file}", tables=["orders"], max_rows=10) as small:
        result = small.query("SELECT id, total FROM orders ORDER BY id")
    assert len(result.rows) == 10
    assert result.truncated
    assert result.rows[0] == (1, 12.5)
    assert result.to_text().splitlines()[-1] == "(first 10 rows shown; more exist)"


@pytest.mark.timeout(10)
def test_endless_query_is_stopped_at_the_deadline(db_file: Path) -> None:
    with ReadOnlyDatabase(f"sqlite:///{db_file}", timeout_s=0.5) as slow:
        start = time.monotonic()
        with pytest.raises(SqlRefused, match=refused("query took longer than 0.5 s and was stopped")):
            slow.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
        assert time.monotonic() - start < 2


# -- resource limits: the bombs of issue 21 end on time, with bounded memory -------------------------------------

PRINTF_BOMB = "length(printf('%.*c', 999999999, 'x'))"  # a 1 GB string, built inside one function call
TOO_BIG = "string or blob too big (a value can have at most 10,000,000 bytes here)"


@pytest.mark.timeout(120)
def test_printf_bomb_is_stopped_at_the_timeout(db_file: Path) -> None:
    # SQLite checks for interruption only between VM instructions, never inside printf: the query's process is killed.
    with ReadOnlyDatabase(f"sqlite:///{db_file}", timeout_s=1) as slow:
        start = time.monotonic()
        with pytest.raises(SqlRefused, match=refused("query took longer than 1 s and was stopped")):
            slow.query(f"SELECT {PRINTF_BOMB}")
        elapsed = time.monotonic() - start
    assert elapsed < 3.5  # the timeout, the worker's start allowance (1 s) and slack for a loaded machine


@pytest.mark.parametrize("value", ["randomblob(999999999)", "zeroblob(999999999)", "hex(randomblob(6000000))"], ids=str)
def test_values_sqlite_builds_are_capped(db: ReadOnlyDatabase, value: str) -> None:
    start = time.monotonic()
    with pytest.raises(SqlRefused, match=refused(f"the database refused the query: {TOO_BIG}")):
        db.query(f"SELECT length({value})")
    assert time.monotonic() - start < 2  # refused at the limit, not after allocating a gigabyte


def test_a_result_too_large_for_the_model_is_refused(db: ReadOnlyDatabase) -> None:
    rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4)"
    with pytest.raises(SqlRefused, match=r"^the result is too large \(more than 32,000,000 bytes\)"):
        db.query(f"{rows} SELECT printf('%.*c', 9000000, 'x') FROM c")


def test_memory_is_capped_even_within_the_value_limit(db: ReadOnlyDatabase) -> None:
    sixty_columns = ", ".join(["zeroblob(9900000)"] * 60)  # each under the value limit, 594 MB together
    too_much = "the query needed too much memory (more than 512 MB) and was stopped"
    with pytest.raises(SqlRefused, match=refused(too_much)):
        db.query(f"SELECT {sixty_columns}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bombs_keep_memory_bounded(db_file: Path) -> None:
    """In a fresh process: the peak memory of the process using the tool and of every process it starts."""
    script = (
        "import resource, sys\n"
        "from ragapp.tools.sql_query import ReadOnlyDatabase, SqlRefused\n"
        "with ReadOnlyDatabase(sys.argv[1], timeout_s=1) as db:\n"
        "    for sql in sys.argv[2:]:\n"
        "        try:\n"
        "            db.query(sql)\n"
        "        except SqlRefused as e:\n"
        "            print(e)\n"
        "hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    bombs = ["SELECT length(randomblob(999999999))", f"SELECT {PRINTF_BOMB}"]
    done = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{db_file}", *bombs],
        check=False,  # the exit code is asserted below
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    *messages, peaks = done.stdout.splitlines()
    own_kb, children_kb = map(int, peaks.split())
    # Importing ragapp takes about 140 MB; each bomb asks for 1 GB (and got it before the limits).
    assert own_kb < 400_000 and children_kb < 400_000, peaks
    assert messages == [f"the database refused the query: {TOO_BIG}", "query took longer than 1 s and was stopped"]


def test_fts3_tokenizer_is_refused(db: ReadOnlyDatabase) -> None:
    # One argument returns the address of a tokenizer: a pointer leak that helps an exploit.
    with pytest.raises(SqlRefused, match=refused("function 'fts3_tokenizer' is not allowed")):
        db.query("SELECT hex(fts3_tokenizer('simple'))")
    with pytest.raises(
        SqlRefused, match=refused("the database refused the query: not authorized to use function: fts3_tokenizer")
    ):
        db._execute("SELECT hex(fts3_tokenizer('simple'))")


def test_limits_hold_without_the_authorizer(db_file: Path) -> None:
    from ragapp.tools import sqlite_worker

    before = snapshot(db_file)
    other = db_file.parent / "other.db"
    conn = sqlite_worker.connect(db_file)  # the query process's connection, before its authorizer is on
    try:
        with pytest.raises(sqlite3.OperationalError, match="too many attached databases - max 0"):
            conn.execute(f"ATTACH DATABASE '{other}' AS other")
        with pytest.raises(sqlite3.DataError, match="string or blob too big"):
            conn.execute("SELECT randomblob(999999999)")
        with pytest.raises(sqlite3.OperationalError, match="too many terms in compound SELECT"):
            conn.execute("SELECT 1" + " UNION SELECT 1" * 60)
        with pytest.raises(sqlite3.OperationalError, match="readonly database"):
            conn.execute("DELETE FROM orders")
    finally:
        conn.close()
    assert not other.exists()
    assert snapshot(db_file) == before


def test_syntax_error_comes_back_with_the_databases_message(db: ReadOnlyDatabase) -> None:
    # sqlglot accepts FETCH FIRST; SQLite reads FETCH as an alias and stops at FIRST.
    with pytest.raises(SqlRefused, match=refused('the database refused the query: near "FIRST": syntax error')):
        db.query("SELECT id FROM orders FETCH FIRST 1 ROWS ONLY")


def test_unknown_column_comes_back_with_the_databases_message(db: ReadOnlyDatabase) -> None:
    with pytest.raises(SqlRefused, match=refused("the database refused the query: no such column: price")):
        db.query("SELECT price FROM orders")


def test_unparseable_sql_is_refused(db: ReadOnlyDatabase) -> None:
    with pytest.raises(SqlRefused, match=r"^could not parse the SQL: Expected table name but got the end of the query"):
        db.query("SELECT * FROM")


def test_to_text_shortens_bytes_and_long_strings() -> None:
    result = QueryResult(["id", "blob", "note"], [(1, b"\x00" * 2048, "x" * 600), (2, None, "two\nlines")], False)
    assert result.to_text().splitlines() == [
        "id | blob | note",
        f"1 | <2048 bytes> | {'x' * 500}…",
        "2 | NULL | two\\nlines",
    ]
    assert QueryResult(["id"], [], False).to_text() == "id\n(no rows)"


# -- configuration --------------------------------------------------------------------------------------------


def test_missing_database_file_is_a_config_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    with pytest.raises(ConfigError, match=f"the SQLite database {re.escape(str(missing))} does not exist"):
        ReadOnlyDatabase(f"sqlite:///{missing}")
    assert list(tmp_path.iterdir()) == []


def test_allow_list_naming_a_missing_table_is_a_config_error(db_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"'invoices' not found in sqlite://.*\(it has: customers, orders, secrets\)"):
        ReadOnlyDatabase(f"sqlite:///{db_file}", tables=["orders", "invoices"])


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        ReadOnlyDatabase("not a url")


def test_describe_lists_only_the_allowed_tables(db: ReadOnlyDatabase) -> None:
    assert db.describe() == (
        "customers(id INTEGER, name TEXT, city TEXT)\norders(id INTEGER, customer_id INTEGER, total NUMERIC)"
    )


def test_empty_allow_list_means_every_table_but_not_sqlite_internals(db_file: Path) -> None:
    with ReadOnlyDatabase(f"sqlite:///{db_file}") as everything:
        assert everything.query("SELECT token FROM secrets ORDER BY id").rows == [(t,) for _, t in SECRETS]
        assert "secrets(id INTEGER, token TEXT)" in everything.describe().splitlines()
        with pytest.raises(SqlRefused, match=r"^table 'sqlite_master' is not allowed"):
            everything.query("SELECT name FROM sqlite_master")


# -- the parser guard: every refusal leaves the file as it was -------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO orders VALUES (9, 1, 1.0)", "only SELECT statements are allowed (got INSERT)"),
        ("UPDATE orders SET total = 0", "only SELECT statements are allowed (got UPDATE)"),
        ("DELETE FROM orders", "only SELECT statements are allowed (got DELETE)"),
        ("REPLACE INTO orders VALUES (1, 1, 0)", "only SELECT statements are allowed (got REPLACE)"),
    ],
    ids=["insert", "update", "delete", "replace"],
)
def test_writes_are_refused(db: ReadOnlyDatabase, db_file: Path, sql: str, message: str) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused(message)):
        db.query(sql)
    assert snapshot(db_file) == before


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE loot (x TEXT)", "only SELECT statements are allowed (got CREATE TABLE)"),
        ("DROP TABLE orders", "only SELECT statements are allowed (got DROP TABLE)"),
        ("ALTER TABLE orders ADD COLUMN paid INTEGER", "only SELECT statements are allowed (got ALTER TABLE)"),
        ("CREATE INDEX orders_total ON orders (total)", "only SELECT statements are allowed (got CREATE INDEX)"),
    ],
    ids=["create-table", "drop-table", "alter-table", "create-index"],
)
def test_ddl_is_refused(db: ReadOnlyDatabase, db_file: Path, sql: str, message: str) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused(message)):
        db.query(sql)
    assert snapshot(db_file) == before


def test_multiple_statements_are_refused(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused("one statement at a time (got 2)")):
        db.query("SELECT 1; DROP TABLE orders")
    assert snapshot(db_file) == before


def test_attach_is_refused(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    target = db_file.parent / "stolen.db"
    with pytest.raises(SqlRefused, match=refused("only SELECT statements are allowed (got ATTACH)")):
        db.query(f"ATTACH DATABASE '{target}' AS stolen")
    assert not target.exists()
    assert snapshot(db_file) == before


def test_pragma_write_is_refused(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused("only SELECT statements are allowed (got PRAGMA)")):
        db.query("PRAGMA query_only = OFF")
    assert snapshot(db_file) == before


def test_data_modifying_cte_is_refused(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused("only SELECT statements are allowed (found DELETE inside)")):
        db.query("WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone")
    assert snapshot(db_file) == before


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("SELECT * FROM secrets", "secrets"),
        ("SELECT o.id, s.token FROM orders o JOIN secrets s ON s.id = o.id", "secrets"),
        ("SELECT id FROM orders WHERE id IN (SELECT id FROM secrets)", "secrets"),
        ("WITH s AS (SELECT token FROM secrets) SELECT * FROM s", "secrets"),
        ("SELECT * FROM SECRETS", "SECRETS"),
        ("SELECT sql FROM sqlite_master", "sqlite_master"),
        ("SELECT * FROM temp.orders", "temp.orders"),
        # The CTE named secrets hides the table only inside its own query, not in the outer FROM.
        ("SELECT * FROM secrets, (WITH secrets AS (SELECT 1) SELECT * FROM secrets)", "secrets"),
    ],
    ids=["direct", "join", "subquery", "cte", "upper-case", "sqlite-master", "other-schema", "cte-scope"],
)
def test_disallowed_table_is_refused(db: ReadOnlyDatabase, db_file: Path, sql: str, table: str) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused(f"table '{table}' is not allowed {ALLOWED}")):
        db.query(sql)
    assert snapshot(db_file) == before


def test_denied_function_is_refused(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused("function 'load_extension' is not allowed")):
        db.query("SELECT load_extension('/tmp/evil.so')")
    assert snapshot(db_file) == before


def test_table_valued_function_is_refused(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused("table function 'pragma_table_info' is not allowed in FROM")):
        db.query("SELECT name FROM pragma_table_info('secrets')")
    assert snapshot(db_file) == before


# -- the connection guard, with the parser bypassed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO orders VALUES (9, 1, 1.0)", "not authorized"),
        ("UPDATE orders SET total = 0", "not authorized"),
        ("DELETE FROM orders", "not authorized"),
        ("REPLACE INTO orders VALUES (1, 1, 0)", "not authorized"),
        ("CREATE TABLE loot (x TEXT)", "not authorized"),
        ("DROP TABLE orders", "not authorized"),
        ("ALTER TABLE orders ADD COLUMN paid INTEGER", "not authorized"),
        ("CREATE INDEX orders_total ON orders (total)", "not authorized"),
        ("PRAGMA query_only = OFF", "not authorized"),
        ("PRAGMA journal_mode = WAL", "not authorized"),
        ("BEGIN IMMEDIATE", "not authorized"),
        ("SELECT 1; DROP TABLE orders", "You can only execute one statement at a time."),
        ("SELECT * FROM secrets", "access to secrets.id is prohibited"),
        ("SELECT count(*) FROM secrets", "not authorized"),
        ("WITH orders AS (SELECT token FROM secrets) SELECT * FROM orders", "access to secrets.token is prohibited"),
        ("SELECT name FROM sqlite_master", "access to sqlite_master.name is prohibited"),
        ("SELECT load_extension('/tmp/evil.so')", "not authorized to use function: load_extension"),
    ],
    ids=[
        "insert",
        "update",
        "delete",
        "replace",
        "create-table",
        "drop-table",
        "alter-table",
        "create-index",
        "pragma-query-only",
        "pragma-journal-mode",
        "begin",
        "multiple-statements",
        "secrets",
        "secrets-count",
        "cte-hiding-secrets",
        "sqlite-master",
        "load-extension",
    ],
)
def test_connection_refuses_what_the_parser_would(db: ReadOnlyDatabase, db_file: Path, sql: str, message: str) -> None:
    before = snapshot(db_file)
    with pytest.raises(SqlRefused, match=refused(f"the database refused the query: {message}")):
        db._execute(sql)
    assert snapshot(db_file) == before


def test_authorizer_denies_attach(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    target = db_file.parent / "stolen.db"
    with pytest.raises(SqlRefused, match=refused("the database refused the query: not authorized")):
        db._execute(f"ATTACH DATABASE '{target}' AS stolen")
    assert not target.exists()  # ATTACH would have created it
    assert snapshot(db_file) == before


def test_read_only_open_holds_without_the_authorizer(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    raw = db._engine.raw_connection()
    try:
        conn = raw.driver_connection
        conn.set_authorizer(None)
        with pytest.raises(sqlite3.OperationalError, match="readonly database"):
            conn.execute("DELETE FROM orders")
        with pytest.raises(sqlite3.OperationalError, match="readonly database"):
            conn.execute("CREATE TABLE loot (x TEXT)")
    finally:
        raw.close()
    assert snapshot(db_file) == before


# -- the LangChain tool -----------------------------------------------------------------------------------------


def test_tool_returns_the_rows_as_text(db: ReadOnlyDatabase) -> None:
    tool = sql_query_tool(db)
    assert tool.name == "sql_query"
    assert list(tool.args) == ["query"]
    assert tool.description.startswith("Run one read-only SQL SELECT on the database and get the rows. Tables: ")
    assert "secrets" not in tool.description
    text = tool.invoke({"query": "SELECT name, city FROM customers ORDER BY id"})
    assert text == "name | city\n" + "\n".join(f"{name} | {city}" for _, name, city in CUSTOMERS)


def test_refused_tool_call_is_an_error_message_for_the_model(db: ReadOnlyDatabase, db_file: Path) -> None:
    before = snapshot(db_file)
    tool = sql_query_tool(db)
    message = tool.invoke(
        {"type": "tool_call", "name": "sql_query", "args": {"query": "DELETE FROM orders"}, "id": "1"}
    )
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert message.content == "only SELECT statements are allowed (got DELETE)"
    assert message.tool_call_id == "1"
    assert snapshot(db_file) == before


# -- PostgreSQL: the read-only transaction ----------------------------------------------------------------------


def test_postgres_read_only_transaction_refuses_writes(postgres_server: Any) -> None:
    """PostgreSQL as the user's database (not ragapp's store): a database of its own on the session's server."""
    driver = next((name for name in ("psycopg", "psycopg2") if _importable(name)), None)
    if driver is None:
        pytest.skip("no PostgreSQL driver (psycopg or psycopg2) installed")
    url = new_database(postgres_server)
    owner = create_engine(database_url(url))
    try:
        with owner.begin() as connection:
            connection.execute(text("CREATE TABLE orders (id integer)"))
            connection.execute(text("INSERT INTO orders VALUES (1)"))
            connection.execute(
                text(
                    "CREATE FUNCTION add_order() RETURNS integer LANGUAGE sql AS 'INSERT INTO orders VALUES (2) RETURNING id'"
                )
            )
        owner.dispose()
        url = make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
        with ReadOnlyDatabase(url, tables=["orders"]) as pg:
            # A function call passes the parser; the transaction is what stops the INSERT inside it.
            with pytest.raises(SqlRefused, match="read-only transaction"):
                pg._execute("SELECT add_order()")
            with pytest.raises(SqlRefused):
                pg._execute("INSERT INTO orders VALUES (3)")
            assert pg.query("SELECT count(*) FROM orders").rows == [(1,)]
        with (
            ReadOnlyDatabase(url, tables=["orders"], timeout_s=0.5) as pg,
            pytest.raises(SqlRefused, match="longer than 0.5 s"),  # the statement timeout
        ):
            pg._execute("SELECT count(*) FROM generate_series(1, 2000000000)")
    finally:
        owner.dispose()
        drop_database(postgres_server, url)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True
