"""The workspace's vector index, kept consistent with the SQL store: a FAISS file in the workspace
(`WorkspaceIndex`, one machine) or pgvector in PostgreSQL (`PgVectorWorkspaceIndex`, shared).

FAISS: the protocol that makes a crash at any moment harmless: vectors are added to the in-memory index,
the index file is replaced atomically, and only then are the chunks marked `indexed` in SQL.
`reconcile` repairs every state in between from the ids alone.

SQL also says which vectors of a graph index are tombstones: those whose chunk is gone (ids are never
reused). So the file needs no list of them, and a crash cannot make the two disagree.

What no crash can do, a person can: delete `index.faiss`, or put back an older copy. Then chunks SQL
marks indexed have no vector. Opening the index notices (`absent_from`): a reader refuses dense
search, saying why; the next ingest marks those chunks pending again (`reconcile`) and embeds them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, cast

import numpy as np
from sqlalchemy import Table, func, inspect, select, text, update

from ragapp.errors import WorkspaceError
from ragapp.indexes import FaissIndex, IndexFileError
from ragapp.indexes.faiss_index import IndexKind, stored_ids
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


def absent_from(store: Store, read_ids: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids `read_ids` returns, the chunks SQL marks indexed whose ids it lacks, how many SQL marks indexed).

    SQL is read before and after the index: a concurrent ingest saves its file before it marks chunks,
    and removes a vector only after its chunk is deleted, so a chunk marked both times was in every copy
    of the file saved in between. Only such chunks count as absent: a reader never mistakes a
    running ingest for a damaged index."""
    before = store.chunk_ids(indexed=True)
    ids = read_ids()
    after = store.chunk_ids(indexed=True)
    both = before & after
    marked = np.fromiter(both, dtype=np.int64, count=len(both))
    return ids, np.setdiff1d(marked, ids), len(after)


@dataclass
class IndexCheck:
    """How a workspace's vectors agree with the chunks SQL marks indexed (for `status` and `doctor`)."""

    state: str  # ok | missing (no file or table) | unreadable | incomplete (marked chunks without a vector)
    vectors: int  # vectors stored (a graph's tombstones included)
    marked: int  # chunks SQL marks indexed
    absent: int  # marked chunks without a vector: dense search cannot find them
    stale: int  # vectors of deleted chunks: a graph's tombstones, or a crash the next ingest repairs
    problem: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if k != "problem" or v is not None}


def check_faiss_file(path: Path, store: Store) -> IndexCheck:
    """Read `path`'s ids (memory-mapped, no model needed) and compare them with SQL."""
    problem: list[str] = []

    def read() -> np.ndarray:
        if not path.exists():
            return np.zeros(0, dtype=np.int64)
        try:
            return stored_ids(path)
        except IndexFileError as exc:
            problem.append(str(exc))
            return np.zeros(0, dtype=np.int64)

    ids, absent, marked = absent_from(store, read)
    chunks = np.fromiter(store.chunk_ids(), dtype=np.int64)
    stale = len(np.setdiff1d(ids, chunks))
    if problem:
        return IndexCheck("unreadable", 0, marked, len(absent), 0, f"{problem[0]} (rebuild: `ragapp ingest PATH`)")
    if not path.exists() and len(absent):  # no file and nothing marked: a first ingest not finished yet
        return IndexCheck("missing", 0, marked, len(absent), 0, f"{path} is missing (rebuild: `ragapp ingest PATH`)")
    if len(absent):
        why = (
            f"{path} lacks the vectors of {len(absent)} of the {marked} chunks marked indexed "
            "(rebuild: `ragapp ingest PATH`)"
        )
        return IndexCheck("incomplete", len(ids), marked, len(absent), stale, why)
    return IndexCheck("ok", len(ids), marked, 0, stale)


def check_pgvector(store: Store) -> IndexCheck:
    """Count pgvector's rows against the chunks marked indexed (one transaction writes both, so they agree
    unless someone edited the tables)."""
    from ragapp.indexes.pgvector_index import TABLE

    with store.engine.connect() as connection:
        marked = connection.scalar(select(func.count()).where(ChunkRow.indexed.is_(True))) or 0
        if not inspect(connection).has_table(TABLE, schema=store.pg_schema or None):
            state = "missing" if marked else "ok"
            problem = f"the table {TABLE} is missing (rebuild: `ragapp ingest PATH`)" if marked else None
            return IndexCheck(state, 0, marked, marked, 0, problem)
        vectors = connection.scalar(text(f"SELECT count(*) FROM {TABLE}")) or 0
        absent = (
            connection.scalar(
                text(
                    "SELECT count(*) FROM chunks c WHERE c.indexed "
                    f"AND NOT EXISTS (SELECT 1 FROM {TABLE} v WHERE v.chunk_id = c.id)"
                )
            )
            or 0
        )
    if absent:
        why = f"{absent} of the {marked} chunks marked indexed have no row in {TABLE} (rebuild: `ragapp ingest PATH`)"
        return IndexCheck("incomplete", vectors, marked, absent, 0, why)
    return IndexCheck("ok", vectors, marked, 0, 0)


class VectorIndex(Protocol):
    """What ingestion and search use of a workspace's vector index, whichever engine holds it."""

    notes: list[str]  # why the index must be rebuilt; a reader refuses to search then

    @property
    def kind(self) -> str: ...

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
        loaded: list[FaissIndex] = []

        def read() -> np.ndarray:
            if self.path.exists():
                # Any layout loads: a file of the other kind is converted by the next save, not re-embedded.
                loaded.append(FaissIndex.load(self.path, self.dim, None, self.hnsw_m))
            else:
                loaded.append(FaissIndex(self.dim, self._layout(0), self.hnsw_m))
            return loaded[0].ids()

        try:
            _, absent, marked = absent_from(self.store, read)
        except IndexFileError as exc:
            return self._start_over(str(exc))
        index = loaded[0]
        if len(absent):  # a writer's reconcile marks them pending; a reader refuses dense search (see `notes`)
            where = "is missing" if not self.path.exists() else f"lacks {len(absent)} of them"
            self.notes.append(f"the vector index {self.path} {where} ({marked} chunks are marked indexed)")
        if index.kind == "hnsw":
            ids = index.ids()
            index.remove(ids[~np.isin(ids, np.fromiter(self.store.chunk_ids(), dtype=np.int64))])
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
        from ragapp.indexes.pgvector_index import PgVectorError, PgVectorIndex

        if store.dialect != "postgresql":
            raise WorkspaceError("index.kind = pgvector needs a PostgreSQL database (database.url = postgresql://...)")
        self.store = store
        self.fingerprint = fingerprint
        self.notes: list[str] = []
        self._rebuild = False
        try:
            table = cast(Table, ChunkRow.__table__)  # a mapped class's __table__ is its Table
            self.index = PgVectorIndex(store.engine, dim, table, hnsw_m)
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
        from ragapp.indexes.pgvector_index import PgVectorError

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
