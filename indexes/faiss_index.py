"""A FAISS vector index keyed by chunk id, saved atomically and loaded without pickle.

Vectors are L2-normalised, so inner product is cosine similarity. The index is a cache of the SQL
store: it can always be rebuilt from it, and it is reconciled against it by id.

Two layouts: flat (exact; one pass over every vector per query) and HNSW (a graph; about 1 ms at 100k
vectors where flat takes 14 ms here). A graph cannot delete a node, so removed vectors stay in it as
tombstones that searches skip; `rebuilt` drops them, and the workspace calls it once they are many.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw"]
EF_SEARCH = 256  # HNSW candidate list: recall@10 0.993 of exact search at 100k chunks, 0.6 ms (docs/performance.md)

# One query scans at most a few hundred MB: OpenMP threads do not pay for themselves there, and when
# another thread is busy (an embedding, a second request) their barriers made a 10k search 25x slower.
faiss.omp_set_num_threads(1)


class IndexFileError(Exception):
    """The index file is unreadable or does not match what the workspace expects."""


def _reason(exc: RuntimeError) -> str:
    """FAISS's message without the C++ function and source line it starts with."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for marker in ("failed: ", "Error: ", ": "):
        if marker in line:
            line = line.rpartition(marker)[2]
            break
    return re.sub(r" \([^()]*\)$", "", line).strip()  # the stale errno text FAISS appends


def stored_ids(path: Path) -> np.ndarray:
    """The ids a saved index holds, read without copying its vectors (memory-mapped) and without knowing the
    model's dimension: what checks of a workspace need. Raises IndexFileError for a file FAISS cannot read."""
    try:
        raw = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise IndexFileError(f"{path}: unreadable FAISS index ({_reason(exc)})") from exc
    if not isinstance(raw, faiss.IndexIDMap2):
        raise IndexFileError(f"{path}: expected an IndexIDMap2, found {type(raw).__name__}")
    return faiss.vector_to_array(raw.id_map).astype(np.int64)


class FaissIndex:
    def __init__(self, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32):
        self.dim = dim
        self.kind = kind
        self.hnsw_m = hnsw_m
        self._index = faiss.IndexIDMap2(self._make_inner())
        self._dead: set[int] = set()  # HNSW tombstones: ids still in the graph, no longer answers
        self._dead_selector: faiss.IDSelector | None = None

    def _make_inner(self) -> faiss.Index:
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = EF_SEARCH
            return inner
        return faiss.IndexFlatIP(self.dim)

    @classmethod
    def load(cls, path: Path, dim: int, kind: IndexKind | None = "flat", hnsw_m: int = 32) -> FaissIndex:
        """Read FAISS's own binary format (never pickle); refuse files that don't match (`kind` None: either)."""
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexFileError(f"{path}: unreadable FAISS index ({_reason(exc)})") from exc
        if not isinstance(raw, faiss.IndexIDMap2):
            raise IndexFileError(f"{path}: expected an IndexIDMap2, found {type(raw).__name__}")
        if raw.d != dim:
            raise IndexFileError(f"{path}: index has dimension {raw.d}, the embedding model has {dim}")
        found: IndexKind = "hnsw" if isinstance(faiss.downcast_index(raw.index), faiss.IndexHNSW) else "flat"
        if kind is not None and found != kind:
            raise IndexFileError(f"{path}: index is {found}, config asks for {kind}")
        index = cls(dim, found, hnsw_m)
        if found == "hnsw":
            inner = faiss.downcast_index(raw.index)
            inner.hnsw.efSearch = EF_SEARCH
            index.hnsw_m = int(inner.hnsw.nb_neighbors(1))
        index._index = raw
        return index

    def save(self, path: Path) -> None:
        """Write to a temporary file, fsync, then rename: readers see the old or the new file, whole."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self._index, str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @property
    def ntotal(self) -> int:
        """Live vectors (tombstones not counted)."""
        return int(self._index.ntotal) - len(self._dead)

    @property
    def tombstones(self) -> int:
        return len(self._dead)

    def ids(self) -> np.ndarray:
        """Ids of the live vectors, in the order they were added."""
        stored = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if not self._dead:
            return stored
        return stored[~np.isin(stored, self._dead_ids())]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected {len(ids)} vectors of dimension {self.dim}, got shape {vectors.shape}")
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were live."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not len(ids) or not self.ntotal:
            return 0
        if self.kind == "flat":
            return int(self._index.remove_ids(ids))
        live = ids[np.isin(ids, self.ids())]
        self._dead.update(live.tolist())
        self._dead_selector = None
        return len(live)

    def rebuilt(self, kind: IndexKind | None = None) -> FaissIndex:
        """The live vectors in a fresh index of `kind` (default: this one's), without tombstones."""
        fresh = FaissIndex(self.dim, kind or self.kind, self.hnsw_m)
        stored = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if len(stored):
            keep = ~np.isin(stored, self._dead_ids())
            if keep.any():
                vectors = self._index.index.reconstruct_n(0, len(stored))
                fresh.add(stored[keep], vectors[keep])
        return fresh

    def vector(self, chunk_id: int) -> np.ndarray:
        return self._index.reconstruct(int(chunk_id))

    def vectors(self, ids: np.ndarray | list[int]) -> np.ndarray:
        return self._index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first, each of shape (len(queries), k'); unfilled slots have id -1.

        `allowed` restricts the search to those ids *before* the top k is taken, so a filter that
        k stored vectors pass always yields k results.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if self._dead:
                allowed = allowed[~np.isin(allowed, self._dead_ids())]
        k = min(k, self.ntotal if allowed is None else len(allowed))
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if self.kind == "flat":
            if allowed is None:
                return self._index.search(queries, k)
            return self._index.search(queries, k, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)))
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        elif self._dead:
            selector = self._skip_dead()
        else:
            selector = None
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(EF_SEARCH, 2 * k))
        scores, ids = self._index.search(queries, k, params=params)
        if (ids >= 0).sum(axis=1).min() >= k:
            return scores, ids
        # A graph walk under a strict filter (or past many tombstones) can dead-end before it finds k
        # answers; then score the candidates exactly.
        candidates = self.ids() if allowed is None else allowed[np.isin(allowed, self.ids())]
        return self._exact(queries, candidates, k)

    def _dead_ids(self) -> np.ndarray:
        return np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))

    def _skip_dead(self) -> faiss.IDSelector:
        if self._dead_selector is None:
            dead = self._dead_ids()
            batch = faiss.IDSelectorBatch(dead)
            self._dead_selector = faiss.IDSelectorNot(batch)
            self._dead_selector.referenced = batch  # IDSelectorNot does not own it: keep it alive
        return self._dead_selector

    def _exact(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(ids))
        sims = queries @ self.vectors(ids).T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, top, axis=1).astype(np.float32), ids[top]
