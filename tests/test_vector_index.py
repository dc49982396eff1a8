"""Reconciling the index file with the SQL store after a crash at each point of the save protocol.

Real SQLite and real FAISS; the vectors are random (no model needed to test the bookkeeping).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ragapp.connectors import Document, Section

from ragapp.chunking import Chunk
from ragapp.store import Store
from ragapp.vector_index import WorkspaceIndex

DIM = 8


def setup_workspace(tmp_path: Path, n_chunks: int = 5) -> tuple[Store, list[int]]:
    store = Store(f"sqlite:///{tmp_path / 'ragapp.db'}")
    chunks = [Chunk(ordinal=i, text=f"c{i}", start=i, end=i + 2, token_count=1) for i in range(n_chunks)]
    store.replace_document(Document("/d.txt", "txt", "x", [Section("x", 0)]), "h", 1, 1.0, chunks)
    return store, sorted(store.chunk_ids())


def open_index(tmp_path: Path, store: Store, fingerprint: str = "m|8") -> WorkspaceIndex:
    return WorkspaceIndex(tmp_path / "index.faiss", store, DIM, fingerprint, "flat", 32)


def vectors(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)


def filled(index: WorkspaceIndex, ids: list[int]) -> WorkspaceIndex:
    """`index` holding a vector for each of `ids`, saved (the end of a normal ingest)."""
    index.reconcile()
    index.add(ids, vectors(len(ids)))
    index.save()
    return index


def test_saved_but_not_marked_is_found(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    index = open_index(tmp_path, store)
    index.reconcile()
    index.add(ids, vectors(len(ids)))
    index.index.save(index.path)  # crash here: file written, SQL never marked
    assert store.counts()["pending"] == 5
    fixed = open_index(tmp_path, store).reconcile()
    assert fixed == {"stale": 0, "lost": 0, "found": 5}
    assert store.counts()["pending"] == 0


def test_marked_but_missing_from_file_is_lost_and_re_pending(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    store.set_indexed(ids, True)  # SQL says indexed, but no index file exists
    fixed = open_index(tmp_path, store).reconcile()
    assert fixed["lost"] == 5
    assert store.counts()["pending"] == 5


def test_vectors_of_deleted_chunks_are_removed(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    filled(open_index(tmp_path, store), ids)
    store.delete_documents(["/d.txt"])  # crash before the index dropped them
    again = open_index(tmp_path, store)
    assert again.reconcile()["stale"] == 5
    assert again.index.ntotal == 0
    assert open_index(tmp_path, store).index.ntotal == 0  # and that was saved


def test_embedding_model_change_rebuilds(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    index = open_index(tmp_path, store, "old|8")
    index.reconcile()
    index.add(ids, vectors(len(ids)))
    index.save()
    assert store.counts()["pending"] == 0
    changed = open_index(tmp_path, store, "new|8")
    assert "embedding model changed" in changed.notes[0]
    changed.reconcile()
    assert store.counts()["pending"] == 5
    assert changed.index.ntotal == 0
    assert open_index(tmp_path, store, "new|8").index.ntotal == 0  # old vectors are gone from disk
    assert not open_index(tmp_path, store, "new|8").notes


def test_corrupt_index_file_is_rebuilt(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    store.set_indexed(ids, True)
    (tmp_path / "index.faiss").write_bytes(b"\x00" * 100)
    index = open_index(tmp_path, store)
    assert "unreadable FAISS index" in index.notes[0]
    index.reconcile()
    assert store.counts()["pending"] == 5


def test_graph_tombstones_come_from_sql_and_are_compacted(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path, n_chunks=20)
    filled(WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "hnsw", 8), ids)
    other = Document("/e.txt", "txt", "y", [Section("y", 0)])
    store.replace_document(other, "h2", 1, 1.0, [Chunk(ordinal=0, text="e", start=0, end=1, token_count=1)])
    # The chunks of /d.txt are deleted in SQL, their vectors still in the saved graph (a crash, or
    # another process's view): opening derives the tombstones from SQL, no file says which they are.
    assert sorted(store.delete_documents(["/d.txt"])) == ids
    reopened = WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "hnsw", 8)
    assert (reopened.index.ntotal, reopened.index.tombstones) == (0, 20)
    assert reopened.search(vectors(1), 5) == []
    assert reopened.reconcile()["stale"] == 0  # nothing left to repair
    reopened.save()  # 20 of 20 are tombstones: compacted away before writing
    again = WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "hnsw", 8)
    assert (again.index.ntotal, again.index.tombstones) == (0, 0)


def test_auto_kind_switches_layout_by_size_without_re_embedding(tmp_path: Path, monkeypatch) -> None:
    from ragapp import vector_index

    monkeypatch.setattr(vector_index, "HNSW_FROM", 10)
    store, ids = setup_workspace(tmp_path, n_chunks=12)
    index = WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "auto", 8)
    index.reconcile()
    index.add(ids[:6], vectors(6))
    index.save()
    assert index.index.kind == "flat"
    index.add(ids[6:], vectors(12)[6:])
    index.save()
    assert index.index.kind == "hnsw" and index.index.ntotal == 12
    assert store.counts()["pending"] == 0
    reopened = WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "auto", 8)
    assert reopened.index.kind == "hnsw" and not reopened.notes
    assert reopened.search(vectors(12)[8], 1)[0][0] == ids[8]
    # Down to 6 (above half of 10): stays a graph; down to 4: flat again.
    reopened.remove(ids[:6])
    reopened.save()
    assert reopened.index.kind == "hnsw"
    reopened.remove(ids[6:8])
    reopened.save()
    assert reopened.index.kind == "flat" and sorted(reopened.index.ids().tolist()) == ids[8:]


def test_changing_kind_converts_the_saved_index(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    filled(open_index(tmp_path, store), ids)
    graph = WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "hnsw", 8)
    assert not graph.notes and graph.index.kind == "flat"  # readers use it as it is
    assert graph.reconcile() == {"stale": 0, "lost": 0, "found": 0}
    graph.save()
    assert graph.index.kind == "hnsw" and store.counts()["pending"] == 0  # converted, not re-embedded
    assert WorkspaceIndex(tmp_path / "index.faiss", store, DIM, "m|8", "hnsw", 8).index.kind == "hnsw"


# -- index.faiss deleted or replaced by hand (issue 21, defect 6) ----------------------------------


def test_a_deleted_index_file_is_noticed_and_the_next_ingest_re_embeds_its_chunks(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    filled(open_index(tmp_path, store), ids)
    (tmp_path / "index.faiss").unlink()
    reader = open_index(tmp_path, store)
    assert reader.notes and str(tmp_path / "index.faiss") in reader.notes[0] and "missing" in reader.notes[0]
    from ragapp.vector_index import check_faiss_file  # new: imported here, so the lines above run on old code

    assert check_faiss_file(tmp_path / "index.faiss", store).state == "missing"
    writer = open_index(tmp_path, store)
    assert writer.reconcile()["lost"] == 5  # their flags reset in one commit: a crash from here re-embeds them
    assert store.counts()["pending"] == 5
    writer.add(ids, vectors(5))
    writer.save()
    assert not open_index(tmp_path, store).notes
    assert check_faiss_file(tmp_path / "index.faiss", store).state == "ok"


def test_an_older_copy_of_the_index_file_is_noticed(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    index = filled(open_index(tmp_path, store), ids[:3])
    older = (tmp_path / "index.faiss").read_bytes()
    index.add(ids[3:], vectors(2))
    index.save()
    (tmp_path / "index.faiss").write_bytes(older)  # a backup put back
    assert "lacks 2 of them" in open_index(tmp_path, store).notes[0]
    from ragapp.vector_index import check_faiss_file

    check = check_faiss_file(tmp_path / "index.faiss", store)
    assert (check.state, check.vectors, check.marked, check.absent) == ("incomplete", 3, 5, 2)


def test_a_truncated_or_garbage_index_file_is_reported_unreadable(tmp_path: Path) -> None:
    store, ids = setup_workspace(tmp_path)
    filled(open_index(tmp_path, store), ids)
    whole = (tmp_path / "index.faiss").read_bytes()
    from ragapp.vector_index import check_faiss_file

    for damaged in (whole[:100], whole[: len(whole) // 2], b"garbage" * 50, b""):
        (tmp_path / "index.faiss").write_bytes(damaged)
        check = check_faiss_file(tmp_path / "index.faiss", store)
        assert (check.state, check.absent) == ("unreadable", 5), damaged[:10]
        assert "unreadable FAISS index" in (check.problem or "") and "Error in" not in (check.problem or "")
        assert "unreadable FAISS index" in open_index(tmp_path, store).notes[0]


def test_a_concurrent_ingest_is_not_taken_for_a_damaged_index(tmp_path: Path) -> None:
    """The reader reads the file, then an ingest saves a newer one and marks its chunks: not absent."""
    from ragapp.vector_index import absent_from

    store, ids = setup_workspace(tmp_path)
    filled(open_index(tmp_path, store), ids[:3])

    def read_then_ingest_finishes() -> np.ndarray:
        held = open_index(tmp_path, store).index.ids()
        store.set_indexed(ids[3:], True)  # the ingest marks what its (newer) file holds
        return held

    _, absent, marked = absent_from(store, read_then_ingest_finishes)
    assert (len(absent), marked) == (0, 5)
