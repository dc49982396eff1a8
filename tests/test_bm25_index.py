"""The BM25 keyword index: ranking, stemming, filtering before top-k, and pickle-free persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ragapp.indexes.bm25_index import IDS_FILE, INFO_FILE, Bm25Index, KeywordIndexError

TEXTS = {
    10: "The quick brown fox jumps over the lazy dog.",
    11: "Foxes are small omnivorous mammals; a fox hunts at night.",
    12: "Rotating API keys: revoke the old key after the new one is deployed.",
    13: "The workspace database is SQLite unless a PostgreSQL URL is configured.",
    14: "Dogs and foxes both belong to the family Canidae.",
}


@pytest.fixture
def index() -> Bm25Index:
    return Bm25Index.build(list(TEXTS), list(TEXTS.values()))


def test_ranks_by_bm25_with_stemming_and_stopwords(index: Bm25Index) -> None:
    hits = index.search("fox hunting", 5)
    ids = [i for i, _ in hits]
    assert ids[0] == 11  # "fox" and "hunts" both match after stemming
    assert set(ids) == {10, 11, 14}  # "foxes"/"fox" stem alike; documents without the terms are absent
    assert all(score > 0 for _, score in hits) and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert index.search("the of and", 5) == []  # stopwords only
    assert index.search("zeppelin", 5) == []  # unknown term
    assert [i for i, _ in index.search("rotate keys", 1)] == [12]


def test_allowed_ids_filter_before_top_k(index: Bm25Index) -> None:
    top1 = index.search("fox", 1)[0][0]
    only = [i for i in TEXTS if i != top1]
    filtered = index.search("fox", 2, allowed=np.asarray(only))
    assert len(filtered) == 2 and top1 not in {i for i, _ in filtered}
    assert index.search("fox", 3, allowed=np.asarray([12, 13])) == []  # no allowed chunk has the term
    assert index.search("fox", 3, allowed=np.asarray([999])) == []  # unknown ids are ignored


def test_save_load_round_trip_without_pickle(tmp_path: Path, index: Bm25Index) -> None:
    index.save(tmp_path / "kw")
    files = sorted(p.name for p in (tmp_path / "kw").iterdir())
    assert all(name.endswith((".npy", ".json")) for name in files), files
    loaded = Bm25Index.load(tmp_path / "kw")
    assert loaded.ids.tolist() == list(TEXTS)
    assert loaded.search("fox hunting", 5) == index.search("fox hunting", 5)
    assert loaded.params == {"k1": 1.2, "b": 0.75}
    with pytest.raises(FileExistsError):  # never written over: a new build goes to a new folder
        index.save(tmp_path / "kw")


def test_params_change_scores(index: Bm25Index) -> None:
    other = Bm25Index.build(list(TEXTS), list(TEXTS.values()), k1=0.5, b=0.1)
    assert other.params == {"k1": 0.5, "b": 0.1}
    assert other.search("fox", 3) != index.search("fox", 3)


def test_empty_index(tmp_path: Path) -> None:
    empty = Bm25Index.build([], [])
    assert empty.search("anything", 3) == [] and len(empty) == 0
    empty.save(tmp_path / "e")
    assert Bm25Index.load(tmp_path / "e").search("anything", 3) == []


def test_damaged_or_hostile_folders_are_refused(tmp_path: Path, index: Bm25Index) -> None:
    folder = tmp_path / "kw"
    index.save(folder)
    # An object array needs pickle to load; loading must refuse it rather than run it.
    np.save(folder / IDS_FILE, np.array([object()] * len(TEXTS), dtype=object), allow_pickle=True)
    with pytest.raises(KeywordIndexError):
        Bm25Index.load(folder)
    np.save(folder / IDS_FILE, np.arange(3), allow_pickle=False)  # wrong length
    with pytest.raises(KeywordIndexError, match="does not match"):
        Bm25Index.load(folder)
    (folder / INFO_FILE).write_text(json.dumps({"format": 99}), encoding="utf-8")
    with pytest.raises(KeywordIndexError, match="format"):
        Bm25Index.load(folder)
    (folder / INFO_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(KeywordIndexError):
        Bm25Index.load(folder)
    with pytest.raises(KeywordIndexError):
        Bm25Index.load(tmp_path / "missing")
