"""The workspace's vector index, kept consistent with the SQL store.

The protocol that makes a crash at any moment harmless: vectors are added to the in-memory index,
the index file is replaced atomically, and only then are the chunks marked `indexed` in SQL.
`reconcile` repairs every state in between from the ids alone.

SQL also says which vectors of a graph index are tombstones: those whose chunk is gone (ids are never
reused). So the file needs no list of them, and a crash cannot make the two disagree.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from indexes import FaissIndex, IndexFileError
from indexes.faiss_index import IndexKind
from ragapp.store import Store

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "embedding_fingerprint"
# index.kind = "auto": a graph from this many vectors on (flat search takes ~1.5 ms at 20k here and grows
# linearly, 14 ms at 100k), flat again below half of it, so a workspace near the line does not flip.
HNSW_FROM = 20_000
COMPACT_AT = 0.1  # a graph is rebuilt without its tombstones once they are this share of it


class WorkspaceIndex:
    def __init__(
        self, path: Path, store: Store, dim: int, fingerprint: str, kind: IndexKind | Literal["auto"], hnsw_m: int
    ):
        self.path = path
        self.store = store
        self.dim = dim
        self.fingerprint = fingerprint
        self.kind = kind
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
        if self.kind != "auto":
            return self.kind
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

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        scores, ids = self.index.search(vector, k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
