"""A FAISS vector index keyed by chunk id, saved atomically and loaded without pickle.

Vectors are L2-normalised, so inner product is cosine similarity. The index is a cache of the SQL
store: it can always be rebuilt from it, and it is reconciled against it by id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw"]


class IndexFileError(Exception):
    """The index file is unreadable or does not match what the workspace expects."""


class FaissIndex:
    def __init__(self, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32):
        self.dim = dim
        self.kind = kind
        self.hnsw_m = hnsw_m
        self._index = faiss.IndexIDMap2(self._make_inner())

    def _make_inner(self) -> faiss.Index:
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = 64
            return inner
        return faiss.IndexFlatIP(self.dim)

    @classmethod
    def load(cls, path: Path, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32) -> FaissIndex:
        """Read FAISS's own binary format (never pickle); refuse files that don't match."""
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexFileError(f"{path}: unreadable FAISS index ({str(exc).splitlines()[0]})") from exc
        if not isinstance(raw, faiss.IndexIDMap2):
            raise IndexFileError(f"{path}: expected an IndexIDMap2, found {type(raw).__name__}")
        if raw.d != dim:
            raise IndexFileError(f"{path}: index has dimension {raw.d}, the embedding model has {dim}")
        found: IndexKind = "hnsw" if isinstance(faiss.downcast_index(raw.index), faiss.IndexHNSW) else "flat"
        if found != kind:
            raise IndexFileError(f"{path}: index is {found}, config asks for {kind}")
        index = cls(dim, kind, hnsw_m)
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
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected {len(ids)} vectors of dimension {self.dim}, got shape {vectors.shape}")
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids) or not self.ntotal:
            return 0
        if self.kind == "flat":
            return int(self._index.remove_ids(ids))
        # HNSW graphs cannot delete: rebuild from the vectors that stay.
        current = self.ids()
        keep = ~np.isin(current, ids)
        removed = int((~keep).sum())
        if removed:
            vectors = self._index.index.reconstruct_n(0, self.ntotal)
            rebuilt = faiss.IndexIDMap2(self._make_inner())
            if keep.any():
                rebuilt.add_with_ids(np.ascontiguousarray(vectors[keep]), current[keep])
            self._index = rebuilt
        return removed

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
        k = min(k, self.ntotal if allowed is None else len(allowed))
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if allowed is None:
            return self._index.search(queries, k)
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        selector = faiss.IDSelectorBatch(allowed)
        if self.kind == "flat":
            return self._index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        # A graph walk under a strict filter can dead-end before it finds k allowed nodes; then the
        # allowed vectors are few enough to score exactly.
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(64, 2 * k))
        scores, ids = self._index.search(queries, k, params=params)
        if (ids >= 0).sum(axis=1).min() >= k:
            return scores, ids
        return self._exact(queries, allowed[np.isin(allowed, self.ids())], k)

    def _exact(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(ids))
        sims = queries @ self.vectors(ids).T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, top, axis=1).astype(np.float32), ids[top]
