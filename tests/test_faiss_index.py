"""indexes/faiss_index: id-keyed vectors, delete by id, atomic save, load without pickle."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from ragapp.indexes import FaissIndex, IndexFileError


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_search_remove(kind: str) -> None:
    index = FaissIndex(16, kind)
    vectors = unit_vectors(50)
    ids = np.arange(1000, 1050)
    index.add(ids, vectors)
    scores, found = index.search(vectors[7], 3)
    assert found[0][0] == 1007 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert index.remove([1007, 1008, 99999]) == 2
    assert index.ntotal == 48
    assert 1007 not in set(index.ids().tolist())
    _, found = index.search(vectors[7], 48)
    assert 1007 not in found[0] and 1008 not in found[0]
    _, found = index.search(vectors[9], 1)
    assert found[0][0] == 1009  # the rest still answers


def test_search_with_k_above_size_and_empty_index() -> None:
    index = FaissIndex(16)
    _, ids = index.search(unit_vectors(1)[0], 5)
    assert ids.shape == (1, 0)
    index.add(np.array([1, 2]), unit_vectors(2))
    _, ids = index.search(unit_vectors(1, seed=3)[0], 10)
    assert sorted(ids[0].tolist()) == [1, 2]


def test_add_rejects_wrong_shapes() -> None:
    index = FaissIndex(16)
    with pytest.raises(ValueError, match="dimension 16"):
        index.add(np.array([1]), unit_vectors(1, dim=8))


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip_is_atomic(tmp_path: Path, kind: str) -> None:
    index = FaissIndex(16, kind)
    index.add(np.arange(10), unit_vectors(10))
    path = tmp_path / "index.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind
    assert not path.read_bytes().startswith(b"\x80")  # FAISS's own format, not a pickle
    loaded = FaissIndex.load(path, 16, kind)
    assert sorted(loaded.ids().tolist()) == list(range(10))
    assert np.allclose(loaded.vector(3), unit_vectors(10)[3], atol=1e-6)


def test_load_refuses_garbage_wrong_dim_wrong_type_and_kind(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.faiss"
    garbage.write_bytes(b"not an index at all")
    with pytest.raises(IndexFileError, match="unreadable FAISS index"):
        FaissIndex.load(garbage, 16)
    good = tmp_path / "good.faiss"
    FaissIndex(16).save(good)
    with pytest.raises(IndexFileError, match="dimension 16"):
        FaissIndex.load(good, 32)
    with pytest.raises(IndexFileError, match="config asks for hnsw"):
        FaissIndex.load(good, 16, "hnsw")
    plain = tmp_path / "plain.faiss"
    faiss.write_index(faiss.IndexFlatIP(16), str(plain))
    with pytest.raises(IndexFileError, match="expected an IndexIDMap2"):
        FaissIndex.load(plain, 16)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_allowed_ids_are_applied_before_top_k(kind: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(5000, 7000, dtype=np.int64)
    index = FaissIndex(16, kind)
    index.add(ids, vectors)
    query = vectors[:1]
    _, unfiltered = index.search(query, 10)
    # The allowed ids are the ones ranked *last*: a post-filter on the top k would find none of them.
    exact = np.argsort(-(vectors @ query[0]))
    allowed = ids[exact[-5:]]
    assert not set(allowed.tolist()) & set(unfiltered[0].tolist())
    scores, found = index.search(query, 3, allowed=allowed)
    expected = ids[exact[-5:]][:3]  # best three of the allowed, by exact inner product
    assert found[0].tolist() == expected.tolist()
    assert np.all(np.diff(scores[0]) <= 1e-6)
    # Ask for more than pass the filter: only the allowed come back (unknown ids are ignored).
    _, found = index.search(query, 10, allowed=np.concatenate([allowed, [99]]))
    assert sorted(i for i in found[0].tolist() if i >= 0) == sorted(allowed.tolist())
    # A broad filter (half the ids) through the normal path.
    half = ids[::2]
    _, found = index.search(query, 10, allowed=half)
    assert len(found[0]) == 10 and set(found[0].tolist()) <= set(half.tolist())


def test_hnsw_removal_leaves_tombstones_that_searches_skip_and_rebuilt_drops() -> None:
    vectors = unit_vectors(300)
    ids = np.arange(300)
    index = FaissIndex(16, "hnsw")
    index.add(ids, vectors)
    assert index.remove(np.arange(0, 300, 3)) == 100
    assert index.remove([0, 3, 999]) == 0  # already gone, or never there
    assert (index.ntotal, index.tombstones) == (200, 100)
    assert not set(index.ids().tolist()) & set(range(0, 300, 3))
    for q in range(30):
        _, found = index.search(vectors[q], 10)
        assert len(found[0]) == 10 and not {int(i) % 3 for i in found[0]} & {0}
        if q % 3:
            assert found[0][0] == q  # a live vector is still its own nearest neighbour
    # A filter that names tombstones only gets live ids back.
    _, found = index.search(vectors[1], 5, allowed=np.array([0, 1, 2, 3]))
    assert sorted(found[0].tolist()) == [1, 2]
    fresh = index.rebuilt()
    assert (fresh.kind, fresh.ntotal, fresh.tombstones) == ("hnsw", 200, 0)
    assert sorted(fresh.ids().tolist()) == sorted(index.ids().tolist())
    flat = index.rebuilt("flat")
    assert flat.kind == "flat" and np.allclose(flat.vector(4), vectors[4], atol=1e-6)


def test_hnsw_recall_against_exact_search() -> None:
    """The graph's candidate list (EF_SEARCH) keeps recall@10 at or near exact search on clustered data."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(50, 32))
    data = (centres[rng.integers(0, 50, 5000)] + rng.normal(scale=0.6, size=(5000, 32))).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    flat, hnsw = FaissIndex(32, "flat"), FaissIndex(32, "hnsw")
    for index in (flat, hnsw):
        index.add(np.arange(5000), data)
    queries = data[:100] + rng.normal(scale=0.3, size=(100, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, exact = flat.search(queries, 10)
    _, approx = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.tolist(), approx.tolist(), strict=True)])
    assert recall >= 0.99


def test_load_accepts_either_layout_when_kind_is_none(tmp_path: Path) -> None:
    path = tmp_path / "index.faiss"
    index = FaissIndex(16, "hnsw", hnsw_m=12)
    index.add(np.arange(5), unit_vectors(5))
    index.save(path)
    loaded = FaissIndex.load(path, 16, None)
    assert (loaded.kind, loaded.hnsw_m, loaded.ntotal) == ("hnsw", 12, 5)
