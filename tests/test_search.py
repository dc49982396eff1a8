"""Retrieval modes, filters applied before top-k, MMR, query expansion, and keyword-index upkeep.

End-to-end tests use the real embedding model on ragapp's own docs plus a few planted files; the
query-expansion control flow is checked with a labelled fake generator, then once with the real one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from ragapp.indexes import Bm25Index

from ragapp import App
from ragapp.cli import cli
from ragapp.errors import UsageError
from ragapp.generators import GenerationConfig
from ragapp.keyword_index import POINTER_KEY
from ragapp.search import Filters, by_score, expand_query
from tests.support import DocsWorkspaces, IngestedDocs

RARE = "XQ7731"  # an identifier no embedding model knows: keywords find it, vectors may not
TINY = """# Tiny notes

## Gardening

Configuration of the tomato beds: water them daily.

## Cooking

Configuration of the oven: preheat to 200 degrees.

## Birds

Configuration of the feeder: refill it on Sundays.
"""
DUPLICATE = """# Retention policy

Backups are kept for thirty days and then deleted automatically by the retention job.
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files planted beside ragapp's docs, each for one behaviour below."""
    folder = tmp_path_factory.mktemp("search") / "planted"
    folder.mkdir()
    (folder / "tiny.md").write_text(TINY, encoding="utf-8")
    (folder / "errors.txt").write_text(
        f"Error {RARE} means the replication slot was dropped; recreate it with the admin tool.\n", encoding="utf-8"
    )
    (folder / "backup-a.md").write_text(DUPLICATE, encoding="utf-8")
    (folder / "backup-b.md").write_text(DUPLICATE, encoding="utf-8")
    (folder / "teams.csv").write_text("team,owner\ninfra,ana\nweb,bo\n", encoding="utf-8")
    return folder


def docs_and_planted(ws: Path, planted: Path) -> Path:
    """A copy of the session's ingested docs/ (see `docs_workspaces`) with the planted files ingested into it."""
    with App(ws) as app:
        app.ingest([planted], progress=False)
    return ws


@pytest.fixture(scope="module")
def workspace(
    planted: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    docs_workspaces: DocsWorkspaces,
    module_database: str,
) -> Path:
    """The module's workspace, on the store `module_database` runs the module on; tests here only read it."""
    ws = tmp_path_factory.mktemp("search") / "ws"
    docs_workspaces.copy(ws, request)
    return docs_and_planted(ws, planted)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filter_is_applied_before_top_k(workspace: Path, mode: str) -> None:
    app = App(workspace)
    unfiltered = app.search("configuration precedence of settings", k=3, mode=mode)
    assert unfiltered and all(not h.source.endswith("tiny.md") for h in unfiltered)  # tiny.md never makes the top 3
    hits = app.search("configuration precedence of settings", k=3, mode=mode, filters={"source": "tiny.md"})
    assert len(hits) == 3  # tiny.md has exactly three chunks, all mentioning "configuration"
    assert all(h.source.endswith("/tiny.md") for h in hits)
    assert {h.heading for h in hits} == {"Gardening", "Cooking", "Birds"}


@pytest.mark.slow
def test_filter_keys_combine(workspace: Path) -> None:
    app = App(workspace)
    md = app.search("configuration", k=10, filters={"kind": "md"})
    assert len(md) == 10 and all(h.source.endswith(".md") for h in md)
    assert [h.chunk_id for h in app.search("configuration", k=10, filters={"kind": "markdown"})] == [
        h.chunk_id for h in md
    ]
    either = app.search("error", k=10, filters={"source": ["errors.txt", "tiny.md"]})
    assert {Path(h.source).name for h in either} == {"errors.txt", "tiny.md"}
    assert app.search("error", k=10, filters={"source": "errors.txt", "kind": "md"}) == []  # AND across keys
    meta = app.search("who owns infra", k=5, filters={"meta.rows": "2"})  # CSV metadata: 2 data rows
    assert meta and all(h.source.endswith("teams.csv") for h in meta)
    doc_id = app.open_store().documents_by_source()[next(iter(h.source for h in either))].id
    by_id = app.search("anything at all", k=5, filters={"document": doc_id})
    assert by_id and {h.source for h in by_id} == {either[0].source}


@pytest.mark.slow
def test_keyword_mode_finds_rare_identifiers_and_hybrid_keeps_them(workspace: Path) -> None:
    app = App(workspace)
    assert Path(app.search(RARE, k=1, mode="bm25")[0].source).name == "errors.txt"
    assert "errors.txt" in {Path(h.source).name for h in app.search(f"what does {RARE} mean", k=4, mode="hybrid")}


@pytest.mark.slow
def test_bm25_mode_does_not_load_the_embedding_model(workspace: Path) -> None:
    app = App(workspace)
    app.search("retention job", k=2, mode="bm25")
    assert app._embedder is None


def test_equal_scores_rank_by_chunk_id() -> None:
    """Indexes return tied scores in any order (pgvector's depends on the query plan, which depends on k)."""
    assert by_score([(7, 0.5), (3, 0.9), (5, 0.5), (2, 0.5)]) == [(3, 0.9), (2, 0.5), (5, 0.5), (7, 0.5)]


@pytest.mark.slow
def test_mmr_drops_a_duplicate_passage(workspace: Path) -> None:
    query = "how long are backups kept before the retention job deletes them"
    plain = App(workspace).search(query, k=2, mode="dense")
    assert {Path(h.source).name for h in plain} == {"backup-a.md", "backup-b.md"}  # two copies of one text
    diverse = App(workspace, config={"retrieval": {"mmr": True, "mmr_lambda": 0.5}}).search(query, k=2, mode="dense")
    assert diverse[0].chunk_id == plain[0].chunk_id
    assert diverse[1].text != diverse[0].text


class FakeGenerator:
    """FAKE (control flow only): returns canned text and records the prompts it was given."""

    model_id = "fake"

    def __init__(self, reply: str):
        self.reply = reply
        self.prompts: list[str] = []

    def generate(self, messages: list[dict[str, str]], config: GenerationConfig) -> str:
        self.prompts.append(messages[-1]["content"])
        return self.reply


@pytest.mark.slow
@pytest.mark.sqlite_only("query expansion is generation, not storage")
def test_multi_query_searches_the_generated_phrasings(workspace: Path) -> None:
    app = App(workspace, config={"retrieval": {"multi_query": 2}})
    fake = FakeGenerator(f"1. {RARE} replication slot\n2. zzyzx qwfp\n- {RARE} replication slot")
    app._generator = fake  # type: ignore[assignment]
    hits = app.search("why did the nightly job stop", k=4, mode="bm25")
    assert len(fake.prompts) == 1 and "why did the nightly job stop" in fake.prompts[0]
    assert "errors.txt" in {Path(h.source).name for h in hits}  # found only through the expansion


def test_expand_query_cleans_the_generated_lines() -> None:
    fake = FakeGenerator("1. first way\n\n- Second way\nQuery 3: first way\nok\nthe question")
    assert expand_query(fake, "The question", 3) == ["first way", "Second way"]  # numbering, echoes, dupes gone


@pytest.mark.slow
@pytest.mark.sqlite_only("query expansion is generation, not storage")
def test_hyde_adds_the_hypothetical_passage(workspace: Path) -> None:
    app = App(workspace, config={"retrieval": {"hyde": True}})
    fake = FakeGenerator(f"Error {RARE} is reported when the replication slot was dropped.")
    app._generator = fake  # type: ignore[assignment]
    hits = app.search("nightly job stopped", k=3, mode="hybrid")
    assert "errors.txt" in {Path(h.source).name for h in hits} and len(fake.prompts) == 1


@pytest.mark.slow
@pytest.mark.sqlite_only("query expansion is generation, not storage")
def test_query_expansion_with_the_real_generator(workspace: Path) -> None:
    app = App(workspace, config={"retrieval": {"multi_query": 2, "hyde": True}})
    hits = app.search("How do I remove documents whose files were deleted?", k=4)
    assert len(hits) == 4 and len({h.chunk_id for h in hits}) == 4
    assert any("sync" in h.text for h in hits)


@pytest.mark.slow
@pytest.mark.usefixtures("module_database", "fresh_database")
def test_keyword_index_is_built_for_old_workspaces_and_repaired(planted: Path, ingested_docs: IngestedDocs) -> None:
    ws = docs_and_planted(ingested_docs.folder, planted)
    app = App(ws)
    store = app.open_store()
    first = store.get_meta(POINTER_KEY)
    expected = [h.chunk_id for h in app.search(RARE, k=3, mode="bm25")]

    # A workspace from before keyword search (no pointer, no folder): the first search builds and saves it.
    shutil.rmtree(ws / first)
    with store.session() as s:
        s.execute(__import__("sqlalchemy").text("DELETE FROM meta WHERE key = :k"), {"k": POINTER_KEY})
        s.commit()
    fresh = App(ws)
    assert [h.chunk_id for h in fresh.search(RARE, k=3, mode="bm25")] == expected
    saved = store.get_meta(POINTER_KEY)
    assert saved is not None and (ws / saved).is_dir()

    # While an ingest holds the lock, a reader builds in memory and leaves the workspace alone.
    shutil.rmtree(ws / saved)
    fd = os.open(ws / "ingest.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert [h.chunk_id for h in App(ws).search(RARE, k=3, mode="bm25")] == expected
        assert not list(ws.glob("bm25-*"))
    finally:
        os.close(fd)

    # A crash mid-build leaves an unreferenced folder; the next ingest repairs and cleans up.
    (ws / "bm25-1").mkdir()
    (ws / "bm25-1" / "ragapp.json").write_text("{", encoding="utf-8")
    report = App(ws).ingest([planted])
    assert "keyword index rebuilt" in report.notes
    pointer = store.get_meta(POINTER_KEY)
    assert [p.name for p in ws.glob("bm25-*")] == [pointer]
    assert App(ws).ingest([planted]).notes == []  # in step: nothing rebuilt


@pytest.mark.slow
@pytest.mark.usefixtures("module_database", "fresh_database")
def test_changing_bm25_parameters_rebuilds(planted: Path, ingested_docs: IngestedDocs) -> None:
    ws = docs_and_planted(ingested_docs.folder, planted)
    before = App(ws).search("retention", k=3, mode="bm25")
    old = App(ws).open_store().get_meta(POINTER_KEY)
    tuned = App(ws, config={"index": {"bm25_k1": 0.4, "bm25_b": 0.2}})
    after = tuned.search("retention", k=3, mode="bm25")
    assert [h.score for h in after] != [h.score for h in before]
    new = tuned.open_store().get_meta(POINTER_KEY)  # the reader rebuilt and saved it (no ingest was running)
    assert new != old and Bm25Index.info(ws / new)["k1"] == 0.4
    assert tuned.ingest([planted]).notes == []


def test_filters_parse() -> None:
    f = Filters.parse(["source=docs/**", "kind=.PDF", "kind=md", "document=4", "meta.team=infra"])
    assert f.source == ("docs/**",) and f.kind == ("pdf", "md") and f.document == (4,)
    assert f.metadata == (("team", ("infra",)),)
    assert not Filters.parse([]) and Filters.parse(["kind=md"])
    for bad, message in [
        ("kind", "KEY=VALUE"),
        ("=md", "KEY=VALUE"),
        ("color=red", "unknown key"),
        ("meta.=x", "unknown key"),
        ("document=four", "whole number"),
    ]:
        with pytest.raises(UsageError, match=message):
            Filters.parse([bad])


@pytest.mark.slow
@pytest.mark.sqlite_only("the CLI's flags and output, not storage")
def test_cli_mode_and_filter(workspace: Path) -> None:
    runner = CliRunner()
    args = ["-w", str(workspace), "search", RARE, "--mode", "bm25", "--filter", "kind=txt", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["hits"]
    assert hits and all(h["source"].endswith("errors.txt") for h in hits)
    bad = runner.invoke(cli, ["-w", str(workspace), "search", "x", "--filter", "color=red"])
    assert bad.exit_code == 2 and "unknown key" in bad.output
    bad = runner.invoke(cli, ["-w", str(workspace), "search", "x", "--mode", "sparse"])
    assert bad.exit_code == 2
    none = runner.invoke(cli, ["-w", str(workspace), "search", "x", "--filter", "source=nothing-here"])
    assert none.exit_code == 0 and "no document matches the filters" in none.output
    # Asking with nothing to read is refused, not answered from thin air.
    refused = runner.invoke(cli, ["-w", str(workspace), "ask", "what is x?", "--filter", "source=nothing-here"])
    assert refused.exit_code == 2 and "no passage matches the filters" in refused.output
