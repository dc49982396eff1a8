"""ragapp.connectors.sql on a real SQLite database: rows as documents, keys, templates, read-only, incremental ingest."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from ragapp.connectors import Document, FileProblem, Section
from ragapp.connectors.sql import SqlSource, SqlSourceError, json_safe

from ragapp import App
from ragapp.cli import cli
from ragapp.errors import UsageError

# The connector reads a user's SQLite database; the workspace's store matters only where rows are ingested.

PRODUCTS = [
    (1, "Kettle", "Boils a litre of water in ninety seconds.", "kitchen", 19.99),
    (2, "Desk lamp", "A warm light with a dimmer for late reading.", "home", 34.5),
    (3, "Rain jacket", "Keeps you dry on a stormy mountain walk.", "outdoor", 89.0),
    (4, "Espresso grinder", "Grinds coffee beans finely for a strong espresso.", "kitchen", 129.0),
]
TEMPLATE = "{name}: {description}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """shop.db: products (id primary key), lines (a composite key) and notes (no primary key)."""
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as c:
        c.executescript(
            """
            CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, description TEXT, category TEXT,
                                   price NUMERIC, photo BLOB);
            CREATE TABLE lines (order_id TEXT, line INTEGER, item TEXT, PRIMARY KEY (order_id, line));
            CREATE TABLE notes (author TEXT, body TEXT);
            INSERT INTO lines VALUES ('A/1,x', 1, 'kettle'), ('A/1,x', 2, 'lamp');
            INSERT INTO notes VALUES ('ann', 'Remember the milk'), (NULL, 'Anonymous tip');
            """
        )
        c.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, x'ff00ff')", PRODUCTS)
    c.close()
    return path


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def read(source: SqlSource) -> dict[str, Document]:
    return {d.source.rpartition("#")[2]: d for d in source.documents()}


# -- the connector, no embedding --------------------------------------------------------------------


def test_default_text_lists_every_non_empty_column_and_metadata_is_json_safe(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("UPDATE products SET description = NULL WHERE id = 2")
    c.close()
    source = SqlSource(url(db), table="products", metadata_columns=["category", "price", "photo"])
    docs = read(source)
    assert list(docs) == ["1", "2", "3", "4"] and not source.problems
    kettle = docs["1"]
    assert kettle.kind == "sql" and kettle.title is None
    assert kettle.text == (
        "id: 1\nname: Kettle\ndescription: Boils a litre of water in ninety seconds.\ncategory: kitchen\nprice: 19.99"
    )  # the photo is binary, not UTF-8: left out
    assert kettle.sections == [Section(kettle.text, 0)]
    assert kettle.metadata == {"table": "products", "category": "kitchen", "price": 19.99}  # bytes skipped
    assert "description" not in docs["2"].text
    json.dumps([d.metadata for d in docs.values()])


def test_json_safe_values() -> None:
    assert json_safe(dt.date(2024, 5, 1)) == "2024-05-01"
    assert json_safe(dt.datetime(2024, 5, 1, 12, 30)) == "2024-05-01T12:30:00"
    assert json_safe(Decimal("19.990")) == 19.99
    assert json_safe(Decimal("0.1000000000000000000001")) == "0.1000000000000000000001"  # a float would round it
    assert json_safe(float("nan")) == "nan"
    assert json_safe(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_safe({"a": [1, b"\x00", Decimal(2)], "b": b"x"}) == {"a": [1, 2.0]}


def test_template_and_title_with_nulls_and_empty_rows(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("UPDATE products SET description = NULL WHERE id = 2")
        c.execute("UPDATE products SET name = NULL, description = NULL WHERE id = 3")
    c.close()
    source = SqlSource(url(db), table="products", template=TEMPLATE, title="{name} ({category})")
    docs = read(source)
    assert (
        docs["1"].text == "Kettle: Boils a litre of water in ninety seconds." and docs["1"].title == "Kettle (kitchen)"
    )
    assert docs["2"].text == "Desk lamp: "  # NULL is empty
    assert "3" not in docs  # nothing but the template's own ": "
    assert source.problems == ["row 3: empty text: name, description are empty"]
    items = list(SqlSource(url(db), table="products", template="{name}").items())
    problems = [i for i in items if isinstance(i, FileProblem)]
    assert [p.source.rpartition("#")[2] for p in problems] == ["3"] and len(items) == 4


def test_sources_are_absolute_stable_and_password_free(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(db.parent)
    relative = SqlSource("sqlite:///shop.db", table="products")
    absolute = SqlSource(f"sqlite+pysqlite:///{db}?timeout=5", table="products")
    assert relative.prefix == absolute.prefix == f"sqlite:///{db}/products#"
    first = [d.source for d in relative.documents()]
    monkeypatch.chdir(tmp_path.parent)
    assert [d.source for d in absolute.documents()] == first
    assert first[0] == f"sqlite:///{db}/products#1"

    secret = SqlSource("postgresql+psycopg2://reader:hunter2@db.example:5432/shop?sslmode=require", table="items")
    assert secret.prefix == "postgresql://reader:***@db.example:5432/shop/items#"
    with pytest.raises(SqlSourceError) as failure:  # no driver, or no server: either way no password in the message
        secret.documents()
    assert "hunter2" not in str(failure.value)


def test_composite_keys_are_quoted(db: Path) -> None:
    source = SqlSource(url(db), table="lines", template="{item}")
    assert [d.source.rpartition("#")[2] for d in source.documents()] == ["A%2F1%2Cx,1", "A%2F1%2Cx,2"]


def test_query_needs_id_columns_and_is_keyed_by_its_hash(db: Path) -> None:
    query = "SELECT id, name FROM products WHERE category = 'kitchen' AND description NOT LIKE '%:foo%'"
    with pytest.raises(SqlSourceError, match="--id"):
        SqlSource(url(db), query=query).documents()
    source = SqlSource(url(db), query=query, id_columns=["id"], template="{name}")
    docs = list(source.documents())
    assert [d.text for d in docs] == ["Kettle", "Espresso grinder"] and docs[0].metadata == {}
    assert docs[0].source.startswith(f"sqlite:///{db}/query:") and docs[0].source.endswith("#1")
    reformatted = SqlSource(url(db), query=query.replace(" FROM", "\n   FROM"), id_columns=["id"])
    assert reformatted.prefix == source.prefix
    dupes = SqlSource(url(db), query="SELECT category, name FROM products", id_columns=["category"])
    assert len(list(dupes.documents())) == 3
    assert dupes.problems == ["row kitchen: another row has the same key (the first one was ingested)"]


def test_table_without_primary_key_needs_id_columns(db: Path) -> None:
    with pytest.raises(SqlSourceError, match="no primary key.*--id"):
        SqlSource(url(db), table="notes").documents()
    source = SqlSource(url(db), table="notes", id_columns=["author"])
    assert [d.text for d in source.documents()] == ["author: ann\nbody: Remember the milk"]
    assert source.problems == ["row number 1 (no key): the id column author is NULL"]  # NULLs sort first


def test_templates_are_checked_before_any_row_is_read(db: Path) -> None:
    # documents() checks eagerly: the errors come before the first row is fetched.
    with pytest.raises(SqlSourceError) as failure:
        SqlSource(url(db), table="products", template="{nme}: {description}").documents()
    assert str(failure.value) == (
        "template field 'nme' is not a column of products (columns: id, name, description, category, price, photo)"
    )
    with pytest.raises(SqlSourceError, match="title field 'label'"):
        SqlSource(url(db), table="products", title="{label}").documents()
    with pytest.raises(SqlSourceError, match="metadata column 'colour'"):
        SqlSource(url(db), table="products", metadata_columns=["colour"]).documents()
    for template in ("{name.__class__}", "{name[0]}", "{name!r}", "{0}", "{}", "{name:{description.x}}", "{name"):
        with pytest.raises(SqlSourceError):
            SqlSource(url(db), table="products", template=template).documents()


def test_bad_database_table_or_query_and_read_only(db: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(SqlSourceError, match="no such database file"):
        SqlSource(url(missing), table="products").documents()
    assert not missing.exists()
    with pytest.raises(SqlSourceError, match=r"no table 'prodcts' .*\(tables: lines, notes, products\)"):
        SqlSource(url(db), table="prodcts").documents()
    with pytest.raises(SqlSourceError, match="no such table: nope"):
        SqlSource(url(db), query="SELECT * FROM nope", id_columns=["id"]).documents()
    with pytest.raises(SqlSourceError, match="readonly"):
        SqlSource(url(db), query="DELETE FROM products", id_columns=["id"]).documents()
    with pytest.raises(SqlSourceError, match="not a database URL"):
        SqlSource("not a url", table="products").documents()
    with pytest.raises(SqlSourceError, match="exactly one"):
        SqlSource(url(db), table="products", query="SELECT 1").documents()
    assert len(list(SqlSource(url(db), table="products").documents())) == len(PRODUCTS)  # nothing was deleted


# -- ingesting, with the real embedding model -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("database")  # rows become documents and chunks in the store: both stores
def test_incremental_ingest_update_delete_and_sync(db: Path, tmp_path: Path) -> None:
    app = App(tmp_path / "ws")
    options = {"table": "products", "template": TEMPLATE, "title": "{name}", "metadata_columns": ["category"]}
    first = app.ingest_sql(url(db), **options)
    assert (first.added, first.files_seen) == (len(PRODUCTS), len(PRODUCTS)) and not first.problems
    again = app.ingest_sql(url(db), **options)
    assert (again.unchanged, again.added, again.chunks_embedded) == (len(PRODUCTS), 0, 0)

    hit = app.search("grind coffee beans", k=1)[0]
    assert hit.source == f"sqlite:///{db}/products#4" and "Grinds coffee beans finely" in hit.text
    outdoor = app.search("something to wear", k=5, filters={"meta.category": "outdoor"})
    assert [h.source.rpartition("#")[2] for h in outdoor] == ["3"]

    with sqlite3.connect(db) as c:
        c.execute("UPDATE products SET description = 'Boils water and whistles when done.' WHERE id = 1")
    c.close()
    updated = app.ingest_sql(url(db), **options)
    assert (updated.updated, updated.unchanged, updated.chunks_embedded) == (1, 3, 1)
    assert "whistles" in app.search("kettle that whistles", k=1)[0].text

    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM products WHERE id = 2")
        c.execute("UPDATE products SET name = NULL, description = NULL WHERE id = 3")  # now no text: kept as it was
    c.close()
    kept = app.ingest_sql(url(db), **options)
    assert kept.removed == 0 and [p.reason for p in kept.problems] == ["empty text: name, description are empty"]
    synced = app.ingest_sql(url(db), **options, sync=True)
    assert (synced.removed, synced.unchanged) == (1, 2) and synced.chunks_removed == 1
    sources = set(app.open_store().documents_by_source())
    assert sources == {f"sqlite:///{db}/products#{n}" for n in (1, 3, 4)}
    assert all(not h.source.endswith("#2") for h in app.search("reading light", k=5))

    # A connector that fails half-way removes nothing, even with a sync prefix.
    prefix = SqlSource(url(db), table="products").prefix

    def failing() -> Iterator[Document]:
        yield Document(prefix + "1", "sql", "Kettle: boils", [Section("Kettle: boils", 0)])
        raise SqlSourceError("the database went away")

    with pytest.raises(SqlSourceError), app._ingestor() as ingestor:
        ingestor.run_documents(failing(), progress=False, sync_prefix=prefix)
    assert set(app.open_store().documents_by_source()) == sources
    assert app.status()["last_ingest"]["status"] == "failed"

    with pytest.raises(UsageError, match="no table 'nope'"):
        app.ingest_sql(url(db), table="nope")


@pytest.mark.slow
def test_cli_ingest_sql_json_and_summary(db: Path, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    args = ["-w", ws, "ingest-sql", url(db), "--table", "products", "--template", TEMPLATE, "--meta", "category"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["files_seen"], report["problems"]) == (len(PRODUCTS), len(PRODUCTS), [])
    result = CliRunner().invoke(cli, [*args, "--sync"])
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.startswith("Ingested 4 rows in ") and "0 new, 0 updated, 4 unchanged, 0 removed" in result.stdout
    )


def test_cli_errors_are_one_line_and_create_nothing(db: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for extra, message in (
        (["--table", "nope"], "Error: no table 'nope'"),
        (["--query", "SELECT name FROM products"], "Error: a query needs the columns"),
        (["--table", "products", "--template", "{name.upper}"], "Error: template field 'name.upper'"),
        ([], "Error: give exactly one of a table or a query (--table / --query)"),
    ):
        result = CliRunner().invoke(cli, ["-w", str(ws), "ingest-sql", url(db), *extra])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not ws.exists()
