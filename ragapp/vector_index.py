"""The workspace's vector index, kept consistent with the SQL store: a FAISS file in the workspace
(`WorkspaceIndex`, one machine) or pgvector in PostgreSQL (`PgVectorWorkspaceIndex`, shared).

FAISS: the protocol that makes a crash at any moment harmless: vectors are added to the in-memory index,
the index file is replaced atomically, and only then are the chunks marked `indexed` in SQL.
`reconcile` repairs every state in between from the ids alone.

SQL also says which vectors of a graph index are tombstones: those whose chunk is gone (ids are never
reused). So the file needs no list of them, and a crash cannot make the two disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from sqlalchemy import select, update

from indexes import FaissIndex, IndexFileError
from indexes.faiss_index import IndexKind
from ragapp.errors import WorkspaceError
from ragapp.store import ChunkRow, Store

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "embedding_fingerprint"
# index.kind = "auto": a graph from this many vectors on (flat search takes ~1.5 ms at 20k here and grows
# linearly, 14 ms at 100k), flat again below half of it, so a workspace near the line does not flip.
HNSW_FROM = 20_000
COMPACT_AT = 0.1  # a graph is rebuilt without its tombstones once they are this share of it


@dataclass
class Restriction:
    """The documents a filtered search may return; their chunk ids are looked up only by an index that needs them."""

    store: Store
    documents: list[int]
    _chunk_ids: np.ndarray | None = field(default=None, repr=False)

    def chunk_ids(self) -> np.ndarray:
        if self._chunk_ids is None:
            self._chunk_ids = np.asarray(self.store.chunk_ids_of(self.documents), dtype=np.int64)
        return self._chunk_ids


class VectorIndex(Protocol):
    """What ingestion and search use of a workspace's vector index, whichever engine holds it."""

    kind: str
    notes: list[str]  # why the index must be rebuilt; a reader refuses to search then

    def reconcile(self) -> dict[str, int]: ...
    def add(self, ids: list[int], vectors: np.ndarray) -> None: ...
    def remove(self, ids: list[int]) -> None: ...
    def save(self) -> None: ...
    def search(self, vector: np.ndarray, k: int, restrict: Restriction | None = None) -> list[tuple[int, float]]: ...
    def stored_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]: ...
    def count(self) -> int: ...


class WorkspaceIndex:
    def __init__(
        self, path: Path, store: Store, dim: int, fingerprint: str, kind: IndexKind | Literal["auto"], hnsw_m: int
    ):
        self.path = path
        self.store = store
        self.dim = dim
        self.fingerprint = fingerprint
        self.wanted_kind = kind
        self.hnsw_m = hnsw_m
        self.notes: list[str] = []  # why the index had to be rebuilt, for the ingest summary
        self._rebuild = False
        self._dirty = False  # the in-memory index differs from the file
        self._unsaved: list[int] = []
        self.index = self._open()

    def _open(self) -> FaissIndex:
        stored = self.store.get_meta(FINGERPRINT_KEY)
        if stored is not None and stored != self.fingerprint:
            return self._start_over(f"embedding model changed ({stored} -> {self.fingerprint})")
        if not self.path.exists():
            return FaissIndex(self.dim, self._layout(0), self.hnsw_m)
        try:
            # Any layout loads: a file of the other kind is converted by the next save, not re-embedded.
            index = FaissIndex.load(self.path, self.dim, None, self.hnsw_m)
        except IndexFileError as exc:
            return self._start_over(str(exc))
        if index.kind == "hnsw":
            stored = index.ids()
            index.remove(stored[~np.isin(stored, np.fromiter(self.store.chunk_ids(), dtype=np.int64))])
        return index

    def _layout(self, live: int, current: IndexKind | None = None) -> IndexKind:
        """The layout `kind` asks for at `live` vectors (auto keeps `current` between HNSW_FROM/2 and HNSW_FROM)."""
        if self.wanted_kind != "auto":
            return self.wanted_kind
        if live >= HNSW_FROM:
            return "hnsw"
        if current == "hnsw" and live >= HNSW_FROM // 2:
            return "hnsw"
        return "flat"

    def _start_over(self, why: str) -> FaissIndex:
        """Only for writers: every stored chunk is embedded again on the next ingest."""
        self.notes.append(f"rebuilding the vector index: {why}")
        self._rebuild = True
        self._dirty = True
        return FaissIndex(self.dim, self._layout(0), self.hnsw_m)

    def reconcile(self) -> dict[str, int]:
        """Make the index and the `indexed` flags agree with the chunks table. Returns what was fixed."""
        if self._rebuild:
            # Order matters: the old vectors are gone from disk before the new fingerprint is recorded.
            self.save()
            self.store.mark_all_unindexed()
            self.store.set_meta(FINGERPRINT_KEY, self.fingerprint)
            self._rebuild = False
        elif self.store.get_meta(FINGERPRINT_KEY) is None:
            self.store.set_meta(FINGERPRINT_KEY, self.fingerprint)
        in_index = set(self.index.ids().tolist())
        all_chunks = self.store.chunk_ids()
        marked = self.store.chunk_ids(indexed=True)
        stale = in_index - all_chunks  # chunks deleted in SQL whose vectors the index still holds
        lost = marked - in_index  # marked indexed, but the index file never got them
        found = (in_index & all_chunks) - marked  # saved to the index, crash before SQL was marked
        if stale:
            self.remove(list(stale))
            if self._dirty:
                self.save()
        if lost:
            self.store.set_indexed(lost, False)
        if found:
            self.store.set_indexed(found, True)
        return {"stale": len(stale), "lost": len(lost), "found": len(found)}

    def add(self, ids: list[int], vectors: np.ndarray) -> None:
        self.index.add(np.asarray(ids, dtype=np.int64), vectors)
        self._unsaved.extend(ids)
        self._dirty = True

    def remove(self, ids: list[int]) -> None:
        if ids and self.index.remove(np.asarray(ids, dtype=np.int64)):
            self._dirty = True

    def save(self) -> None:
        """Write the index file (only if it changed), then mark what it now holds as indexed in SQL.

        Before writing, the index changes layout if `kind` asks for another one at its size now, and a
        graph sheds its tombstones once they are COMPACT_AT of it."""
        index = self.index
        layout = self._layout(index.ntotal, index.kind)
        if layout != index.kind or index.tombstones > COMPACT_AT * (index.ntotal + index.tombstones):
            log.info("vector index: %s -> %s, %d vectors", index.kind, layout, index.ntotal)
            self.index = index.rebuilt(layout)
            self._dirty = True
        if self._dirty or not self.path.exists():
            self.index.save(self.path)
            self._dirty = False
        if self._unsaved:
            self.store.set_indexed(self._unsaved, True)
            self._unsaved = []

    def search(self, vector: np.ndarray, k: int, restrict: Restriction | None = None) -> list[tuple[int, float]]:
        allowed = None if restrict is None else restrict.chunk_ids()
        if allowed is not None and not len(allowed):
            return []
        scores, ids = self.index.search(vector, k, allowed)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def stored_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        stored = set(self.index.ids().tolist())
        have = [int(i) for i in ids if int(i) in stored]
        return dict(zip(have, self.index.vectors(have), strict=True)) if have else {}

    def count(self) -> int:
        return self.index.ntotal

    @property
    def kind(self) -> str:
        return self.index.kind


class PgVectorWorkspaceIndex:
    """Vectors in PostgreSQL next to their chunks; written in the transaction that marks the chunks indexed."""

    kind = "pgvector"

    def __init__(self, store: Store, dim: int, fingerprint: str, hnsw_m: int):
        from indexes.pgvector_index import PgVectorError, PgVectorIndex

        if store.dialect != "postgresql":
            raise WorkspaceError("index.kind = pgvector needs a PostgreSQL database (database.url = postgresql://...)")
        self.store = store
        self.fingerprint = fingerprint
        self.notes: list[str] = []
        self._rebuild = False
        try:
            self.index = PgVectorIndex(store.engine, dim, ChunkRow.__table__, hnsw_m)
        except PgVectorError as exc:
            raise WorkspaceError(str(exc)) from None
        stored = store.get_meta(FINGERPRINT_KEY)
        with store.engine.connect() as connection:
            stored_dim = self.index.stored_dim(connection)
        if stored is not None and stored != fingerprint:
            self._start_over(f"embedding model changed ({stored} -> {fingerprint})")
        elif stored_dim is not None and stored_dim != dim:
            self._start_over(f"stored vectors have dimension {stored_dim}, the embedding model has {dim}")
        self._ready = stored_dim is not None and not self._rebuild

    def _start_over(self, why: str) -> None:
        self.notes.append(f"rebuilding the vector index: {why}")
        self._rebuild = True

    def reconcile(self) -> dict[str, int]:
        """Writers only: create or replace the table, then make the `indexed` flags agree with the vectors."""
        from indexes.pgvector_index import PgVectorError

        with self.store.engine.begin() as connection:
            try:
                self.index.create(connection, drop=self._rebuild)
            except PgVectorError as exc:
                raise WorkspaceError(str(exc)) from None
            if self._rebuild:  # one transaction: the old vectors, the flags and the fingerprint change together
                connection.execute(update(ChunkRow).values(indexed=False))
            has_vector = select(self.index.table.c.chunk_id).where(self.index.table.c.chunk_id == ChunkRow.id).exists()
            lost = connection.execute(
                update(ChunkRow).where(ChunkRow.indexed.is_(True), ~has_vector).values(indexed=False)
            ).rowcount
            found = connection.execute(
                update(ChunkRow).where(ChunkRow.indexed.is_(False), has_vector).values(indexed=True)
            ).rowcount
        if self._rebuild or self.store.get_meta(FINGERPRINT_KEY) is None:
            self.store.set_meta(FINGERPRINT_KEY, self.fingerprint)
        self._rebuild = False
        self._ready = True
        return {"stale": 0, "lost": lost or 0, "found": found or 0}

    def add(self, ids: list[int], vectors: np.ndarray) -> None:
        with self.store.engine.begin() as connection:
            self.index.add(connection, ids, vectors)
            for start in range(0, len(ids), 1000):
                part = ids[start : start + 1000]
                connection.execute(update(ChunkRow).where(ChunkRow.id.in_(part)).values(indexed=True))

    def remove(self, ids: list[int]) -> None:
        """Nothing to do: a chunk's vector is deleted with it (ON DELETE CASCADE)."""

    def save(self) -> None:
        """Nothing to do: every add is committed."""

    def search(self, vector: np.ndarray, k: int, restrict: Restriction | None = None) -> list[tuple[int, float]]:
        if not self._ready:
            return []
        return self.index.search(vector, k, None if restrict is None else restrict.documents)

    def stored_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return self.index.vectors(ids) if self._ready else {}

    def count(self) -> int:
        return self.index.count() if self._ready else 0
