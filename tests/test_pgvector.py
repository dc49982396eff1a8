"""pgvector as the vector index, against real PostgreSQL 16 + pgvector 0.6 (pgserver).

Its results are compared with FAISS's exact (flat) search on the same vectors: identical with an
exact scan, recall@10 >= 0.99 through the HNSW graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ragapp.connectors import Document, Section
from ragapp.indexes import FaissIndex

from ragapp import App
from ragapp.chunking import Chunk
from ragapp.errors import WorkspaceError
from ragapp.store import ChunkRow, Store
from ragapp.vector_index import PgVectorWorkspaceIndex, Restriction
from tests.support import drop_database, new_database

DIM = 384


def clustered_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in 200 clusters, like embeddings of a corpus on many topics (uniform ones are too easy)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def filled_store(url: str, n: int, per_document: int = 100) -> tuple[Store, list[int]]:
    """`n` chunks in documents of `per_document` each; returns the store and the chunk ids in order."""
    store = Store(url)
    for d in range(n // per_document):
        doc = Document(source=f"/doc{d}.txt", kind="text", text="x", sections=[Section("x", 0)], title=None)
        chunks = [Chunk(ordinal=i, text=f"c{d}-{i}", start=0, end=1, token_count=1) for i in range(per_document)]
        store.replace_document(doc, f"h{d}", 1, 0.0, chunks)
    with store.session() as s:
        ids = list(s.scalars(ChunkRow.__table__.select().with_only_columns(ChunkRow.id).order_by(ChunkRow.id)))
    return store, ids


@pytest.fixture
def pg_url(postgres_server: Any) -> Iterator[str]:
    url = new_database(postgres_server)
    yield url
    drop_database(postgres_server, url)


@pytest.mark.slow
def test_same_results_as_faiss_flat(pg_url: str) -> None:
    n = 6000
    store, ids = filled_store(pg_url, n)
    vectors = clustered_vectors(n)
    index = PgVectorWorkspaceIndex(store, DIM, "m|test", hnsw_m=16)
    index.reconcile()
    for start in range(0, n, 1000):
        index.add(ids[start : start + 1000], vectors[start : start + 1000])
    assert store.counts()["pending"] == 0 and index.count() == n

    flat = FaissIndex(DIM)
    flat.add(np.asarray(ids), vectors)
    queries = clustered_vectors(60, seed=1)
    recall = []
    for query in queries:
        _, expected = flat.search(query, 10)
        expected_ids = expected[0].tolist()
        exact = index.index.search(query, 10, exact=True)
        assert [chunk_id for chunk_id, _ in exact] == expected_ids
        graph = index.search(query, 10)
        recall.append(len({c for c, _ in graph} & set(expected_ids)) / 10)
        scores = np.asarray([s for _, s in graph])
        assert np.all(np.diff(scores) <= 1e-6)  # best first
    assert np.mean(recall) >= 0.99, f"HNSW recall@10 {np.mean(recall):.3f}"

    # A filter is part of the statement: all k answers come from the allowed documents, even a strict filter.
    allowed_docs = [3]
    restrict = Restriction(store, allowed_docs)
    hits = index.search(queries[0], 10, restrict)
    allowed_chunks = set(restrict.chunk_ids().tolist())
    assert len(hits) == 10 and {c for c, _ in hits} <= allowed_chunks
    _, expected = flat.search(queries[0], 10, np.asarray(sorted(allowed_chunks)))
    assert [c for c, _ in hits] == expected[0].tolist()
    assert index.search(queries[0], 10, Restriction(store, [])) == []

    # Vectors go with their chunks, in the same transaction.
    store.delete_documents(["/doc0.txt"])
    assert index.count() == n - 100
    assert not set(ids[:100]) & {c for c, _ in index.search(vectors[0], 20)}
    stored = index.stored_vectors(ids[100:103])
    assert sorted(stored) == ids[100:103]
    np.testing.assert_allclose(stored[ids[100]], vectors[100], atol=1e-6)
    store.close()


def test_model_change_rebuilds_and_dimension_is_checked(pg_url: str) -> None:
    store, ids = filled_store(pg_url, 10, per_document=10)
    first = PgVectorWorkspaceIndex(store, DIM, "model-a", hnsw_m=16)
    first.reconcile()
    first.add(ids, clustered_vectors(10))
    assert store.counts()["pending"] == 0

    reader = PgVectorWorkspaceIndex(store, 64, "model-b", hnsw_m=16)
    assert reader.notes and "embedding model changed" in reader.notes[0]
    assert reader.search(np.ones(64, dtype=np.float32), 3) == []  # never mixes vectors of two models
    reader.reconcile()  # a writer: the table is replaced in one transaction with the flags
    assert store.counts()["pending"] == 10 and reader.count() == 0
    assert store.get_meta("embedding_fingerprint") == "model-b"
    reader.add(ids, clustered_vectors(10)[:, :64] / np.linalg.norm(clustered_vectors(10)[:, :64], axis=1)[:, None])
    assert reader.count() == 10 and store.counts()["pending"] == 0
    store.close()


def test_reconcile_repairs_flags_from_the_vectors(pg_url: str) -> None:
    store, ids = filled_store(pg_url, 20, per_document=10)
    index = PgVectorWorkspaceIndex(store, DIM, "m", hnsw_m=16)
    index.reconcile()
    index.add(ids[:10], clustered_vectors(10))
    store.set_indexed(ids[10:], True)  # marked indexed without a vector: a state no writer leaves, repaired anyway
    store.set_indexed(ids[:5], False)  # a vector whose flag was lost
    assert index.reconcile() == {"stale": 0, "lost": 10, "found": 5}
    assert store.chunk_ids(indexed=True) == set(ids[:10])
    store.close()


def test_pgvector_needs_postgresql(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(WorkspaceError, match="needs a PostgreSQL database"):
        PgVectorWorkspaceIndex(store, DIM, "m", 16)
    app = App(tmp_path / "ws", config={"index": {"kind": "pgvector"}})
    with pytest.raises(WorkspaceError, match="needs a PostgreSQL database"):
        app.ingest([tmp_path])
