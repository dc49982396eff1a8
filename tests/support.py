"""Helpers the tests import: paths, the browser, PostgreSQL databases, a workspace with docs/ ingested.

A plain module, not conftest.py: a test that imported `tests.conftest` loaded it a second time beside
pytest's own `conftest`, with globals of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, make_url, text

from ragapp.config import DEFAULT_SYSTEM
from ragapp.generators.base import GenerationConfig
from ragapp.store import database_url

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Settings of the test run, not of ragapp: read once and taken out of the environment, where ragapp would
# refuse them as unknown RAGAPP_* settings (module fixtures start Apps and servers before any per-test
# cleanup of the environment). An admin URL of your own PostgreSQL server (with pgvector) to run the
# PostgreSQL half on instead of pgserver's; the folder holding the evaluation data (beir/, faq_debian.jsonl).
TEST_DATABASE_URL = os.environ.pop("RAGAPP_TEST_DATABASE_URL", None)
TEST_DATA = Path(os.environ.pop("RAGAPP_TEST_DATA", "") or ROOT.parent / "shared" / "data")
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

    def drop_leftovers(self) -> None:
        """Drops what this run created and left (templates of `DocsWorkspaces`, databases a test kept): the
        server is the user's, unlike pgserver's, which is deleted with its folder."""
        with self.engine.connect() as connection:
            names = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
                {"prefix": f"ragapp\\_test\\_{os.getpid()}\\_%"},
            ).scalars()
            for name in list(names):
                connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))


def run_sql(server: Any, sql: str) -> None:
    """One statement on the server's admin database; an error raises (pgserver's psql would only print it)."""
    server.psql(sql if isinstance(server, ExternalServer) else f"\\set ON_ERROR_STOP on\n{sql}")


_databases = itertools.count()


def new_database(server: Any, template: str | None = None) -> str:
    """A fresh database on the test server (empty, or a copy of `template`); its URL."""
    name = f"ragapp_test_{os.getpid()}_{next(_databases)}"
    run_sql(server, f"CREATE DATABASE {name}" + (f" TEMPLATE {template};" if template else ";"))
    return server.get_uri(name)


def drop_database(server: Any, url: str) -> None:
    server.psql(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE);")


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
    drop_database(server, url)


def default_sigint() -> None:
    """`preexec_fn` for children that a test interrupts with SIGINT. A shell starting a job in the
    background (`make test &`) leaves SIGINT ignored, children inherit that, and Python then never
    raises KeyboardInterrupt; restoring the default lets the child see Ctrl-C as a user's terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class IngestedDocs:
    """docs/ ingested into a workspace: the session's template, or a test's copy of it (`DocsWorkspaces.copy`)."""

    corpus: Path  # the folder that was ingested: the sources' parent; tests must not change it
    folder: Path  # the workspace folder (SQLite: ragapp.db + index.faiss + bm25-*; PostgreSQL: bm25-*)
    database: str | None  # the PostgreSQL database's name; None for SQLite
    added: int  # what the one real ingest reported
    chunks_added: int
    chunks_embedded: int
    problems: int


_sessions: dict[Path, DocsWorkspaces] = {}


class EmbeddingMemo:
    """The vectors the real embedder gave for docs/ in this test run, so that docs/ is embedded once per run,
    not once per store kind and worker (about 30 s of one core each time): the same texts through the same
    model give the same vectors. The workers share them through an .npz file (no pickle); a worker that
    finds none embeds, as the first one did."""

    def __init__(self, path: Path):
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    @contextmanager
    def serving(self, embedder: Any) -> Iterator[None]:
        """While open, `embedder.embed` embeds only texts not seen before; what it embeds is saved after."""
        fingerprint = embedder.fingerprint
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as saved:
                if str(saved["fingerprint"]) == fingerprint:
                    self.vectors.update(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
        real = embedder.embed
        known = len(self.vectors)

        def embed(texts: list[str]) -> np.ndarray:
            keys = [self.key(t) for t in texts]
            missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self.vectors}
            if missing:
                self.vectors.update(zip(missing, real(list(missing.values())), strict=True))
            return np.stack([self.vectors[k] for k in keys]) if keys else real(texts)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(embedder, "embed", embed)
            yield
        if len(self.vectors) == known:
            return  # nothing new: the file already holds all of it
        temporary = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp")
        with temporary.open("wb") as out:
            np.savez(
                out,
                fingerprint=fingerprint,
                keys=np.array(list(self.vectors)),
                vectors=np.stack(list(self.vectors.values())),
            )
        os.replace(temporary, self.path)  # another worker reads a whole file or none


class DocsWorkspaces:
    """ragapp's docs/ ingested with the real embedder once per store kind per session, copied per test (the
    second kind, and other workers, take the first ingest's vectors from `EmbeddingMemo`).

    SQLite: the template folder is copied (database file, FAISS file, BM25 folder, all written by one
    ingest, so in step). PostgreSQL: the test's database (the URL in RAGAPP_DATABASE_URL, which the
    `database`, `module_database` and `fresh_database` fixtures set) is replaced by
    `CREATE DATABASE ... TEMPLATE` of the ingested one, and the folder (its BM25 index) is copied beside it."""

    def __init__(self, root: Path):
        if not any(DOCS.glob("*.md")):
            pytest.skip(f"no documentation in {DOCS}")
        self.root = root
        self.corpus = root / "docs"
        shutil.copytree(DOCS, self.corpus)
        self._templates: dict[str, IngestedDocs] = {}
        # The workers of one run share the folder above their own temporary roots.
        shared = root.parent.parent if os.environ.get("PYTEST_XDIST_WORKER") else root.parent
        self.memo = EmbeddingMemo(shared / "docs-embeddings.npz")

    @classmethod
    def of(cls, factory: pytest.TempPathFactory) -> DocsWorkspaces:
        """The test session's one instance (the `docs_workspaces` fixture; also for helpers that get only the factory)."""
        root = factory.getbasetemp() / "docs-workspaces"
        if root not in _sessions:
            root.mkdir(exist_ok=True)
            _sessions[root] = cls(root)
        return _sessions[root]

    def _ingest(self, folder: Path, url: str) -> IngestedDocs:
        from ragapp import App

        with App(folder, config={"database": {"url": url}}) as app, self.memo.serving(app.embedder):
            report = app.ingest([self.corpus], progress=False)
        return IngestedDocs(
            self.corpus,
            folder,
            make_url(url).database if url else None,
            report.added,
            report.chunks_added,
            report.chunks_embedded,
            len(report.problems),
        )

    def template(self, server: Any | None) -> IngestedDocs:
        """The ingested template for SQLite (server None) or for PostgreSQL on `server`, built on first use."""
        kind = "sqlite" if server is None else "postgresql"
        if kind not in self._templates:
            if server is None:
                self._templates[kind] = self._ingest(self.root / "sqlite", "")
            else:
                url = new_database(server)
                ingested = self._ingest(self.root / "postgresql", url)
                # A template must have no session open while it is copied; this also keeps any from opening.
                run_sql(server, f"ALTER DATABASE {ingested.database} WITH ALLOW_CONNECTIONS false;")
                self._templates[kind] = ingested
        return self._templates[kind]

    def copy(self, dest: Path, request: pytest.FixtureRequest) -> IngestedDocs:
        """A workspace at `dest` holding what the template does, on the store the test runs on now (the
        PostgreSQL database RAGAPP_DATABASE_URL names, which is replaced, or SQLite when it is unset)."""
        url = os.environ.get("RAGAPP_DATABASE_URL")
        server = request.getfixturevalue("postgres_server") if url else None
        ingested = self.template(server)
        name = None
        if url:
            name = make_url(url).database
            drop_database(server, url)  # the empty database the fixture made becomes a copy of the template
            run_sql(server, f"CREATE DATABASE {name} TEMPLATE {ingested.database};")
        shutil.copytree(ingested.folder, dest)
        return replace(ingested, folder=dest, database=name)


# A RAG prompt on which SmolLM2-135M, greedy and without penalties, writes one sentence again and again.
LOOP = [
    {"role": "system", "content": DEFAULT_SYSTEM},
    {
        "role": "user",
        "content": "Passages:\n[1] ragapp ingests folders of .md .txt .html .pdf .docx .csv .json .jsonl files.\n\n"
        "[2] Each file is parsed in a sandboxed worker process.\n\n"
        "Question: Which file formats can be ingested?\nAnswer briefly, citing passages like [1].",
    },
]
LOOPING = GenerationConfig(max_new_tokens=48, stop=[])
