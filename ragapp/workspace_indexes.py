"""Opening a workspace's two indexes: fresh for an ingest to write, cached for searches to read.

A reader keeps its open indexes until an ingest replaces them (the FAISS file's size and time, the BM25
pointer in SQL), so a long-lived App (the server) loads each index once per ingest, not once per query.
This module imports nothing heavy: the index modules load when an index is first opened.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ragapp.errors import WorkspaceError

if TYPE_CHECKING:
    from ragapp.config import IndexSettings
    from ragapp.embedding import Embedder
    from ragapp.indexes.bm25_index import Bm25Index
    from ragapp.keyword_index import WorkspaceKeywords
    from ragapp.store import Store
    from ragapp.vector_index import IndexCheck, VectorIndex

INDEX_FILE = "index.faiss"
Kind = Literal["auto", "flat", "hnsw", "pgvector"]  # `index.kind`


class WorkspaceIndexes:
    """The vector and keyword indexes of the workspace folder `workspace` over the chunks in a store.

    `embedder` is called only when a vector index is opened (it needs the model's dimension and
    fingerprint); `writer_lock` is the workspace's ingest lock, taken to save a keyword index that a
    reader had to build.
    """

    def __init__(
        self,
        workspace: Path,
        settings: IndexSettings,
        embedder: Callable[[], Embedder],
        writer_lock: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self.workspace = workspace
        self.settings = settings
        self._embedder = embedder
        self._writer_lock = writer_lock
        self._vectors: tuple[tuple[int, int] | None, VectorIndex] | None = None  # (file stamp, index)
        self._keywords: tuple[str | None, Bm25Index] | None = None  # (pointer, index)

    @property
    def faiss_path(self) -> Path:
        return self.workspace / INDEX_FILE

    def kind(self, store: Store) -> Kind:
        """`index.kind` as it applies to this database: auto is pgvector on PostgreSQL."""
        if self.settings.kind == "auto" and store.dialect == "postgresql":
            return "pgvector"
        return self.settings.kind

    def vectors(self, store: Store) -> VectorIndex:
        """The vector index, opened now (an ingest writes to it)."""
        from ragapp.vector_index import PgVectorWorkspaceIndex, WorkspaceIndex

        i = self.settings
        e = self._embedder()
        kind = self.kind(store)
        if kind == "pgvector":
            return PgVectorWorkspaceIndex(store, e.dim, e.fingerprint, i.hnsw_m)
        return WorkspaceIndex(self.faiss_path, store, e.dim, e.fingerprint, kind, i.hnsw_m)

    def keywords(self, store: Store) -> WorkspaceKeywords:
        """The keyword index's folders and pointer (an ingest writes to it)."""
        from ragapp.keyword_index import WorkspaceKeywords

        i = self.settings
        return WorkspaceKeywords(self.workspace, store, i.bm25_k1, i.bm25_b)

    def reader_vectors(self, store: Store) -> VectorIndex:
        """The index for searching: a FAISS file is read again only when an ingest has replaced it."""
        if self.kind(store) == "pgvector":
            if self._vectors is None or self._vectors[1].notes:  # a rebuild may have finished since
                self._vectors = (None, self.vectors(store))
            return self._vectors[1]
        try:
            info = self.faiss_path.stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        if self._vectors is None or self._vectors[0] != stamp:
            self._vectors = (stamp, self.vectors(store))
        return self._vectors[1]

    def searchable_vectors(self, store: Store) -> VectorIndex:
        """The reader's vector index, or an error saying why a search with it would be silently incomplete."""
        index = self.reader_vectors(store)
        if index.notes:
            raise WorkspaceError(
                f"{index.notes[0]}: dense and hybrid search would miss passages; run `ragapp ingest PATH` "
                "(any path) to rebuild it from the database, or use --mode bm25 until then"
            )
        return index

    def reader_keywords(self, store: Store) -> Bm25Index:
        """The BM25 index for searching, reloaded only when an ingest has switched to a new one.

        A workspace without one (ingested by an older ragapp, or other BM25 parameters) gets it built
        now, and saved too unless an ingest is running (that ingest saves it when it finishes).
        """
        keywords = self.keywords(store)
        pointer = keywords.pointer()
        if self._keywords is None or self._keywords[0] != pointer:
            index = keywords.load()
            if index is None:
                try:
                    with self._writer_lock():
                        index = keywords.materialise()
                        if index is None:
                            keywords.sync()
                            index = keywords.load()
                        pointer = keywords.pointer()
                except (WorkspaceError, OSError):  # an ingest is running, or the workspace is read-only
                    pass
                index = index or keywords.build()
            self._keywords = (pointer, index)
        return self._keywords[1]

    def check(self, store: Store) -> IndexCheck:
        """How the vector index agrees with the chunks SQL marks indexed (no model is loaded)."""
        from ragapp.vector_index import check_faiss_file, check_pgvector

        if self.kind(store) == "pgvector":
            return check_pgvector(store)
        return check_faiss_file(self.faiss_path, store)
