from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from ragapp.store import database_url

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Debian's Chromium, headless; without the background-networking flags it keeps trying the closed network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


_module_database: str | None = None  # the URL `module_database` set for the module running now


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's RAGAPP_* settings must not leak into tests (the model cache dir may)."""
    for name in list(os.environ):
        if name.startswith("RAGAPP_") and name != "RAGAPP_CACHE_DIR":
            if name == "RAGAPP_DATABASE_URL" and os.environ[name] == _module_database:
                continue
            monkeypatch.delenv(name)


# An admin URL of your own PostgreSQL server (with pgvector) to run the PostgreSQL half of the suite on,
# instead of the private one from pgserver. Read at import: the tests' own environment is cleaned.
TEST_DATABASE_URL = os.environ.get("RAGAPP_TEST_DATABASE_URL")


class ExternalServer:
    """The two things the tests ask of a pgserver server, done on a server of the user's."""

    def __init__(self, url: str):
        self.url = make_url(url)
        self.engine = create_engine(database_url(url), isolation_level="AUTOCOMMIT")

    def psql(self, sql: str) -> None:
        with self.engine.connect() as connection:
            connection.execute(text(sql))

    def get_uri(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A private PostgreSQL 16 server with pgvector (the pgserver wheel), one for the whole run, or the
    server RAGAPP_TEST_DATABASE_URL names.

    Its folder is outside pytest's temporary root: as root, pgserver runs the server as another user, and
    any pytest session that starts meanwhile makes that root private again (mode 0700)."""
    if TEST_DATABASE_URL:
        server = ExternalServer(TEST_DATABASE_URL)
        yield server
        server.engine.dispose()
        return
    pgserver = pytest.importorskip("pgserver", reason="pgserver not installed (it is in the test extra)")
    folder = Path(tempfile.mkdtemp(prefix="ragapp-test-pg-"))
    server = pgserver.get_server(folder, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


_databases = itertools.count()


def new_database(server: Any) -> str:
    """A fresh, empty database on the test server; its URL."""
    name = f"ragapp_test_{os.getpid()}_{next(_databases)}"
    server.psql(f"CREATE DATABASE {name};")
    return server.get_uri(name)


def _drop(server: Any, url: str) -> None:
    server.psql(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE);")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _isolated_env: None) -> Iterator[str]:
    """Runs a test on both stores: the workspace's SQLite file (with FAISS), and PostgreSQL (with pgvector).

    The PostgreSQL run gets a new database through RAGAPP_DATABASE_URL, which the App, the CLI and
    servers started by the test all read. Tests about the SQLite or FAISS files themselves are marked
    `sqlite_only`."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    marker = request.node.get_closest_marker("sqlite_only")
    if marker:
        pytest.skip(f"about the workspace's own files: {marker.args[0]}")
    server = request.getfixturevalue("postgres_server")
    url = new_database(server)
    monkeypatch.setenv("RAGAPP_DATABASE_URL", url)
    yield url
    _drop(server, url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """`database` for a module whose workspace (or server) is built once for all its tests: the whole
    module runs on SQLite, then on PostgreSQL with one database. A test there that needs a workspace of
    its own asks for `fresh_database` too."""
    global _module_database
    if request.param == "sqlite":
        yield "sqlite"
        return
    server = request.getfixturevalue("postgres_server")
    url = new_database(server)
    _module_database = url
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAGAPP_DATABASE_URL", url)
        yield url
    _module_database = None
    _drop(server, url)


@contextmanager
def database_of_its_own(request: pytest.FixtureRequest) -> Iterator[None]:
    """For a module-scoped fixture in a `module_database` module that needs a workspace apart (a second server)."""
    if os.environ.get("RAGAPP_DATABASE_URL") is None:
        yield
        return
    server = request.getfixturevalue("postgres_server")
    url = new_database(server)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAGAPP_DATABASE_URL", url)
        yield
    _drop(server, url)


@pytest.fixture
def fresh_database(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _isolated_env: None
) -> Iterator[None]:
    """In a `module_database` module: a database of the test's own on the PostgreSQL run."""
    if request.getfixturevalue("module_database") == "sqlite":
        yield
        return
    server = request.getfixturevalue("postgres_server")
    url = new_database(server)
    monkeypatch.setenv("RAGAPP_DATABASE_URL", url)
    yield
    _drop(server, url)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A copy of ragapp's own documentation: real Markdown written for people."""
    if not any(DOCS.glob("*.md")):
        pytest.skip(f"no documentation in {DOCS}")
    folder = tmp_path / "corpus"
    shutil.copytree(DOCS, folder)
    return folder


def default_sigint() -> None:
    """`preexec_fn` for children that a test interrupts with SIGINT. A shell starting a job in the
    background (`make test &`) leaves SIGINT ignored, children inherit that, and Python then never
    raises KeyboardInterrupt; restoring the default lets the child see Ctrl-C as a user's terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
