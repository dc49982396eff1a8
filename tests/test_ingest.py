"""Ingesting a real folder with the real embedding model: incremental, sync, bad files, rebuilds."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from pathlib import Path

import faiss
import pytest
from ragapp.indexes import Bm25Index
from sqlalchemy import select

from ragapp import App
from ragapp.errors import UsageError, WorkspaceError
from ragapp.keyword_index import POINTER_KEY
from ragapp.store import ChunkRow, DocumentRow
from ragapp.vector_index import FINGERPRINT_KEY
from tests.support import DOCS, IngestedDocs
from tests.workspace import index_digest, vector_ids, vectors_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("database")]

MINIMAL_PDF_HEADER = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
SMALL = ("workspace.md", "retrieval.md", "installation.md")  # three real pages; the tests here need no more


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A few of ragapp's own pages: for tests about what ingest does, where the size of the corpus does not matter."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in SMALL:
        shutil.copy(DOCS / name, folder / name)
    return folder


def snapshot(app: App) -> tuple[list[tuple], list[tuple], str]:
    """Everything ingest must leave untouched when nothing changed."""
    store = app.open_store()
    with store.session() as s:
        docs = [(d.id, d.source, d.content_hash, d.updated_at) for d in s.scalars(select(DocumentRow))]
        chunks = [(c.id, c.document_id, c.text, c.indexed) for c in s.scalars(select(ChunkRow).order_by(ChunkRow.id))]
    return docs, chunks, index_digest(app)


def assert_consistent(app: App) -> None:
    """Both indexes hold exactly the chunks SQL has, all marked indexed; no source twice; no stale BM25 folder."""
    store = app.open_store()
    ids = vector_ids(app)
    assert len(ids) == len(set(ids))
    assert set(ids) == store.chunk_ids()
    pointer = store.get_meta(POINTER_KEY)
    assert pointer is not None and [p.name for p in app.workspace.glob("bm25-*")] == [pointer]
    keyword_ids = Bm25Index.load(app.workspace / pointer).ids.tolist()
    assert len(keyword_ids) == len(set(keyword_ids)) and set(keyword_ids) == store.chunk_ids()
    assert store.counts()["pending"] == 0
    with store.session() as s:
        sources = list(s.scalars(select(DocumentRow.source)))
    assert len(sources) == len(set(sources))


def test_ingest_search_and_unchanged_reingest(ingested_docs: IngestedDocs) -> None:
    corpus = ingested_docs.corpus
    files = sorted(corpus.glob("*.md"))
    app = App(ingested_docs.folder)  # docs/ ingested once per session with the real model; this is a copy
    assert ingested_docs.added == len(files) and not ingested_docs.problems
    assert ingested_docs.chunks_added > len(files) and ingested_docs.chunks_embedded == ingested_docs.chunks_added
    assert_consistent(app)
    before = snapshot(app)

    again = app.ingest([corpus])
    assert (again.added, again.updated, again.unchanged) == (0, 0, len(files))
    assert again.chunks_embedded == 0
    assert snapshot(app) == before

    hits = app.search("remove documents whose files were deleted sync", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    assert any("--sync" in h.text for h in hits)
    top = hits[0]
    assert Path(top.source).parent == corpus.resolve() and top.anchor
    source_text = Path(top.source).read_text(encoding="utf-8")
    assert top.text in source_text  # offsets point into the Markdown source
    assert source_text[top.start : top.end] == top.text


def test_changed_file_replaces_only_its_chunks(tmp_path: Path, small_corpus: Path) -> None:
    app = App(tmp_path / "ws")
    app.ingest([small_corpus])
    target = min(small_corpus.glob("*.md"))
    store = app.open_store()
    old_doc = store.documents_by_source([str(target.resolve())])[str(target.resolve())]
    with store.session() as s:
        old_ids = set(s.scalars(select(ChunkRow.id).where(ChunkRow.document_id == old_doc.id)))
    other_before = store.chunk_ids() - old_ids
    assert "zebra" not in app.search("zebra herds at dawn", k=1)[0].text  # also caches the index for reading

    target.write_text(
        target.read_text(encoding="utf-8") + "\n\n## Zebra migration\n\nThe zebra flag moves herds at dawn.\n",
        encoding="utf-8",
    )
    report = app.ingest([small_corpus])
    assert (report.updated, report.added) == (1, 0)
    assert report.chunks_removed == len(old_ids)
    assert report.chunks_embedded == report.chunks_added
    now = store.chunk_ids()
    assert not (now & old_ids) and other_before <= now
    assert_consistent(app)
    assert "zebra" in app.search("zebra herds at dawn", k=1)[0].text
    assert "zebra" in app.search("zebra herds", k=1, mode="bm25")[0].text  # the keyword index followed
    target.write_text(
        target.read_text(encoding="utf-8").replace("zebra", "okapi").replace("Zebra", "Okapi"), encoding="utf-8"
    )
    app.ingest([small_corpus])
    assert_consistent(app)
    assert app.search("zebra", k=5, mode="bm25") == []  # the old chunks are gone from the keyword index
    assert "okapi" in app.search("okapi herds", k=1, mode="bm25")[0].text


def test_sync_removes_vanished_files_only_when_asked(tmp_path: Path, small_corpus: Path) -> None:
    app = App(tmp_path / "ws")
    app.ingest([small_corpus])
    gone = max(small_corpus.glob("*.md"))
    gone_source = str(gone.resolve())
    gone.unlink()
    assert app.ingest([small_corpus]).removed == 0
    assert gone_source in app.open_store().documents_by_source()
    report = app.ingest([small_corpus], sync=True)
    assert report.removed == 1 and report.chunks_removed > 0
    assert gone_source not in app.open_store().documents_by_source()
    assert_consistent(app)
    for mode in ("dense", "bm25", "hybrid"):
        assert all(h.source != gone_source for h in app.search("configuration", k=20, mode=mode))


def test_bad_files_are_listed_and_the_rest_ingested(tmp_path: Path, small_corpus: Path) -> None:
    bad = small_corpus / "bad"
    bad.mkdir()
    (bad / "corrupt.pdf").write_bytes(MINIMAL_PDF_HEADER + b"garbage" * 10)
    (bad / "binary.txt").write_bytes(b"\x00\x01\x02ELF\x00" * 100)
    (bad / "empty.md").write_bytes(b"")
    (bad / "latin.txt").write_bytes(
        "Caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade r\xe9sum\xe9.\n".encode("latin-1") * 5
    )
    (bad / "huge.txt").write_bytes(b"word " * 300_000)  # 1.5 MB, over the 1 MB limit set below
    (bad / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (bad / "dangling.md").symlink_to(bad / "does-not-exist.md")
    (bad / "good.txt").write_text("The platypus lays eggs and detects electric fields.", encoding="utf-8")

    app = App(tmp_path / "ws", config={"ingest": {"max_file_mb": 1}})
    report = app.ingest([small_corpus])
    reasons = {Path(p.source).name: p.reason for p in report.problems}
    assert set(reasons) == {"corrupt.pdf", "binary.txt", "empty.md", "huge.txt", "picture.png", "dangling.md"}
    assert "PDF" in reasons["corrupt.pdf"]
    assert "binary" in reasons["binary.txt"]
    assert "empty" in reasons["empty.md"]
    assert "limit" in reasons["huge.txt"]
    assert "unsupported" in reasons["picture.png"]
    warnings = {Path(w.source).name: w.reason for w in report.warnings}
    assert "UTF-8" in warnings["latin.txt"]
    hit = app.search("café crème brûlée", k=1)[0]
    assert hit.source.endswith("latin.txt") and "Café crème" in hit.text
    assert app.search("platypus electric fields", k=1)[0].source.endswith("good.txt")
    assert_consistent(app)
    runs = app.status()["last_ingest"]
    assert runs["failed"] == 6 and runs["status"] == "completed"


def test_file_that_turns_corrupt_keeps_its_previous_version(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    note = folder / "note.txt"
    note.write_text("Okapis are related to giraffes.", encoding="utf-8")
    app = App(tmp_path / "ws")
    app.ingest([folder])
    note.write_bytes(b"\x00\xff\x00binary now")
    report = app.ingest([folder])
    assert report.problems and "binary" in report.problems[0].reason
    assert "Okapis" in app.search("okapi relatives", k=1)[0].text


def test_embedding_model_change_rebuilds_the_index(tmp_path: Path, small_corpus: Path) -> None:
    app = App(tmp_path / "ws")
    first = app.ingest([small_corpus])
    app.open_store().set_meta(FINGERPRINT_KEY, "some-other-model|384")
    with pytest.raises(WorkspaceError, match="embedding model changed"):
        App(tmp_path / "ws").search("anything")
    report = App(tmp_path / "ws").ingest([small_corpus])
    assert any("embedding model changed" in n for n in report.notes)
    assert report.chunks_embedded == first.chunks_added and report.unchanged == first.added
    assert_consistent(app)


@pytest.mark.sqlite_only("FAISS's flat and HNSW layouts")
def test_hnsw_index_finds_the_same_top_hit(ingested_docs: IngestedDocs) -> None:
    """Switching `index.kind` re-lays the stored vectors out at the next ingest, without embedding again."""
    queries = ("configuration precedence", "corrupt PDF", "citations in answers")
    flat = App(ingested_docs.folder)  # the default flat index: docs/ as the session's one ingest left it
    expected = [flat.search(query, k=1)[0].text for query in queries]
    hnsw = App(ingested_docs.folder, config={"index": {"kind": "hnsw"}})
    report = hnsw.ingest([ingested_docs.corpus])
    assert report.unchanged == ingested_docs.added and report.chunks_embedded == 0
    layout = faiss.read_index(str(ingested_docs.folder / "index.faiss"))
    assert isinstance(faiss.downcast_index(layout.index), faiss.IndexHNSWFlat)
    assert [hnsw.search(query, k=1)[0].text for query in queries] == expected


def test_include_and_exclude_globs(tmp_path: Path, small_corpus: Path) -> None:
    app = App(tmp_path / "ws")
    names = sorted(p.name for p in small_corpus.glob("*.md"))
    report = app.ingest([small_corpus], include=["*.md"], exclude=[names[0]])
    assert report.added == len(names) - 1
    assert not any(s.endswith(names[0]) for s in app.open_store().documents_by_source())


def test_missing_path_is_refused_and_a_second_ingest_waits_for_the_first(tmp_path: Path, small_corpus: Path) -> None:
    app = App(tmp_path / "ws")
    with pytest.raises(UsageError, match="path not found"):
        app.ingest([tmp_path / "nope"])
    (tmp_path / "ws").mkdir()
    fd = os.open(tmp_path / "ws" / "ingest.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another ingest holds the workspace
    released = threading.Timer(2.0, os.close, [fd])
    released.start()
    started = time.monotonic()
    try:
        report = app.ingest([small_corpus])
    finally:
        released.cancel()
    assert report.added > 0 and time.monotonic() - started >= 2.0  # waited, then did all the work
    # What does not wait (deleting a collection) is refused while an ingest runs.
    with app.ingest_lock(), pytest.raises(WorkspaceError, match="another ingest is running"):
        App(tmp_path / "ws").ingest_lock().__enter__()


def test_single_file_root(tmp_path: Path, small_corpus: Path) -> None:
    one = min(small_corpus.glob("*.md"))
    copy = tmp_path / "single.md"
    shutil.copy(one, copy)
    report = App(tmp_path / "ws").ingest([copy])
    assert report.added == 1 and report.chunks_added > 0


def test_pdf_docx_and_html_citations_carry_page_and_anchor(tmp_path: Path) -> None:
    from docx import Document as DocxDocument

    from tests.test_connectors_filesystem import make_pdf

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "manual.pdf").write_bytes(
        make_pdf([["Chapter one covers unpacking the device."], ["The reset button sits under the battery cover."]])
    )
    doc = DocxDocument()
    doc.add_heading("Warranty terms", level=1)
    doc.add_paragraph("The warranty lasts thirty-six months from the date of purchase.")
    doc.save(folder / "terms.docx")
    (folder / "faq.html").write_text(
        "<html><body><nav>Home | Products</nav><main><h1>FAQ</h1>"
        "<section id='shipping'><h2>Shipping</h2><p>Orders ship from the Rotterdam warehouse within two days.</p>"
        "</section></main></body></html>",
        encoding="utf-8",
    )
    app = App(tmp_path / "ws")
    assert app.ingest([folder]).added == 3
    pdf_hit = app.search("where is the reset button", k=1)[0]
    assert pdf_hit.source.endswith("manual.pdf") and pdf_hit.page == 2
    docx_hit = app.search("how long is the warranty", k=1)[0]
    assert docx_hit.source.endswith("terms.docx") and docx_hit.heading == "Warranty terms"
    html_hit = app.search("which warehouse do orders ship from", k=1)[0]
    assert html_hit.source.endswith("faq.html") and html_hit.anchor == "shipping"
    assert "Home | Products" not in html_hit.text


def test_identical_chunks_are_embedded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    text = "# Backups\n\n" + "\n\n".join(
        f"Step {i}: copy the archive to the second disk and verify it." for i in range(30)
    )
    for name in ("a.md", "copy-of-a.md"):
        (folder / name).write_text(text, encoding="utf-8")
    app = App(tmp_path / "ws")
    embedded: list[str] = []
    real_embed = app.embedder.embed

    def counting_embed(texts: list[str]):  # a spy around the real model, not a fake
        embedded.extend(texts)
        return real_embed(texts)

    monkeypatch.setattr(app.embedder, "embed", counting_embed)
    report = app.ingest([folder], progress=False)
    assert report.chunks_added == report.chunks_embedded >= 4
    assert len(embedded) == report.chunks_embedded // 2 == len(set(embedded))
    assert_consistent(app)
    store = app.open_store()
    with store.session() as s:
        by_doc: dict[int, list[int]] = {}
        for chunk in s.scalars(select(ChunkRow).order_by(ChunkRow.ordinal)):
            by_doc.setdefault(chunk.document_id, []).append(chunk.id)
    first, second = by_doc.values()
    assert vectors_of(app, first).tobytes() == vectors_of(app, second).tobytes()
