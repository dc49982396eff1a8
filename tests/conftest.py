"""Fixtures: a clean environment, the PostgreSQL server and databases, a workspace with docs/ ingested.

Helpers that tests import live in tests/support.py; nothing imports this module by name."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DOCS,
    TEST_DATABASE_URL,
    DocsWorkspaces,
    ExternalServer,
    IngestedDocs,
    drop_database,
    new_database,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cpu_share() -> int:
    """Threads for each pytest-xdist worker (`make test` runs one per core): the cores this process may
    use, divided among the workers. Set before torch is imported (torch reads OMP_NUM_THREADS then), and
    inherited by the servers and CLI processes a test starts.

    Why: a small model's matrix products gain little from a second thread (SmolLM2 decodes 1.2x faster
    with 2 threads than with 1 here), while two single-threaded workers each keep their full speed; and
    two workers with 2 threads each on 2 cores oversubscribe them (see ../shared/notes/cpu-stack.md)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_share()))

_module_database: str | None = None  # the URL `module_database` set for the module running now


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's RAGAPP_* settings must not leak into tests (the model cache dir may)."""
    for name in list(os.environ):
        if name.startswith("RAGAPP_") and name != "RAGAPP_CACHE_DIR":
            if name == "RAGAPP_DATABASE_URL" and os.environ[name] == _module_database:
                continue
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A private PostgreSQL 16 server with pgvector (the pgserver wheel), one for the whole run, or the
    server RAGAPP_TEST_DATABASE_URL names.

    Its folder is outside pytest's temporary root: as root, pgserver runs the server as another user, and
    any pytest session that starts meanwhile makes that root private again (mode 0700)."""
    if TEST_DATABASE_URL:
        server = ExternalServer(TEST_DATABASE_URL)
        yield server
        server.drop_leftovers()
        server.engine.dispose()
        return
    pgserver = pytest.importorskip("pgserver", reason="pgserver not installed (it is in the test extra)")
    folder = Path(tempfile.mkdtemp(prefix="ragapp-test-pg-"))
    server = pgserver.get_server(folder, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


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
        pytest.skip(f"SQLite only: {marker.args[0]}")
    server = request.getfixturevalue("postgres_server")
    url = new_database(server)
    monkeypatch.setenv("RAGAPP_DATABASE_URL", url)
    yield url
    drop_database(server, url)


# The files that take a minute or more, longest first (`pytest --durations=0` on 2 cores). `make test` hands
# whole files to its pytest-xdist workers in collection order (--no-loadscope-reorder), so these start first
# and the workers end together instead of one running the longest file alone at the end. A file missing here
# only starts later; the order never changes what a test sees (each file's own order is kept). The first two
# files go one to each worker: only one of them ingests docs/, whose vectors the other then reuses (EmbeddingMemo).
LONGEST_FIRST = (
    "test_evals_runner.py",
    "test_reliability.py",  # before test_model_lifecycle, which needs docs/ ingested: by then it is embedded
    "test_generator_vllm.py",
    "test_model_lifecycle.py",
    "test_model_serve.py",
    "test_crash.py",
    "test_evals_faq.py",
    "test_ingest.py",
    "test_concurrency.py",
    "test_align.py",
    "test_service_vllm.py",
    "test_service_api.py",
    "test_finetune.py",
    "test_reward.py",
    "test_service_fuzz.py",
    "test_service_widget.py",
    "test_bench.py",
    "test_replicas.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`sqlite_only` in a `module_database` module: the test is skipped on the module's PostgreSQL run."""
    marker = item.get_closest_marker("sqlite_only")
    callspec = getattr(item, "callspec", None)
    if marker and callspec is not None and callspec.params.get("module_database") == "postgresql":
        pytest.skip(f"SQLite only: {marker.args[0]}")


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
    drop_database(server, url)


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
    drop_database(server, url)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A copy of ragapp's own documentation: real Markdown written for people."""
    if not any(DOCS.glob("*.md")):
        pytest.skip(f"no documentation in {DOCS}")
    folder = tmp_path / "corpus"
    shutil.copytree(DOCS, folder)
    return folder


@pytest.fixture(scope="session")
def docs_workspaces(tmp_path_factory: pytest.TempPathFactory) -> DocsWorkspaces:
    """docs/ ingested once per store kind for the whole run (lazily); `.copy(dest, request)` hands out copies.
    For module-scoped fixtures; a test asks for `ingested_docs`."""
    return DocsWorkspaces.of(tmp_path_factory)


@pytest.fixture
def ingested_docs(request: pytest.FixtureRequest, tmp_path: Path, docs_workspaces: DocsWorkspaces) -> IngestedDocs:
    """A workspace of the test's own at tmp_path/"ws" with docs/ already ingested, on the store the test runs
    on (SQLite, or the PostgreSQL database of `database`/`module_database`/`fresh_database`). Its `.folder` is
    the workspace; `.corpus` the ingested (shared, read-only) folder; the rest is the one ingest's report."""
    for store_fixture in ("database", "module_database", "fresh_database"):
        if store_fixture in request.fixturenames:
            request.getfixturevalue(store_fixture)  # its RAGAPP_DATABASE_URL must be set before the copy
    return docs_workspaces.copy(tmp_path / "ws", request)
