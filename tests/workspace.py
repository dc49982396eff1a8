"""What a workspace's vector index holds, read the same way whichever engine holds it (FAISS file or pgvector)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from ragapp.indexes import FaissIndex
from sqlalchemy import text

from ragapp import App


def _pgvector(app: App) -> bool:
    return app.indexes.kind(app.open_store()) == "pgvector"


def vector_ids(app: App) -> list[int]:
    """Ids of the stored vectors (duplicates kept, so a test can see them)."""
    if _pgvector(app):
        with app.open_store().engine.connect() as connection:
            return [int(r[0]) for r in connection.execute(text("SELECT chunk_id FROM chunk_vectors"))]
    return FaissIndex.load(app.workspace / "index.faiss", 384, None).ids().tolist()


def vectors_of(app: App, ids: Sequence[int]) -> np.ndarray:
    if _pgvector(app):
        stored = app.indexes.vectors(app.open_store()).stored_vectors(ids)
        return np.stack([stored[i] for i in ids])
    return FaissIndex.load(app.workspace / "index.faiss", 384, None).vectors(list(ids))


def index_digest(app: App) -> str:
    """Changes whenever the stored vectors do."""
    if _pgvector(app):
        with app.open_store().engine.connect() as connection:
            rows = connection.execute(text("SELECT chunk_id, embedding::text FROM chunk_vectors ORDER BY chunk_id"))
            return hashlib.sha256(repr(rows.all()).encode()).hexdigest()
    return hashlib.sha256((app.workspace / "index.faiss").read_bytes()).hexdigest()
