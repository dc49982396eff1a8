"""A BM25 keyword index keyed by chunk id, built with bm25s and saved without pickle.

bm25s precomputes every (term, document) score, which makes queries fast but means the index cannot
be updated in place: adding or removing a document changes the collection statistics of all others.
So the index is rebuilt from the SQL store whenever the chunks change (seconds for tens of thousands
of chunks) and saved into a fresh folder; the caller switches to it atomically.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import Stemmer

if TYPE_CHECKING:
    import bm25s


def _bm25s() -> Any:
    """bm25s, imported on first use and without numba. bm25s imports numba whenever it is installed (vLLM
    brings it) for a backend ragapp does not use (queries go through `get_scores_from_ids`, plain numpy):
    that cost 67 MB of memory and 0.5 s, and a process that has numba's llvmlite loaded when vLLM starts
    its workers makes them fail. If numba is already loaded, bm25s may use it."""
    if "bm25s" in sys.modules or "numba" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["numba"] = None  # type: ignore[assignment]  # makes `import numba` raise ImportError
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    return bm25s


FORMAT = 1
IDS_FILE = "chunk_ids.npy"
INFO_FILE = "ragapp.json"


class KeywordIndexError(Exception):
    """The keyword index folder is missing, unreadable or was written by an incompatible version."""


class Bm25Index:
    """Lucene-variant BM25 over stemmed, stopword-filtered English tokens.

    `k1` and `b` are BM25's term-saturation and length-normalisation parameters.
    """

    def __init__(self, ids: np.ndarray, retriever: bm25s.BM25 | None, language: str = "english"):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.language = language
        self._retriever = retriever
        self._stemmer = Stemmer.Stemmer(language)

    @classmethod
    def build(
        cls, ids: Sequence[int], texts: Sequence[str], k1: float = 1.2, b: float = 0.75, language: str = "english"
    ) -> Bm25Index:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        index = cls(np.asarray(ids, dtype=np.int64), None, language)
        if len(texts):
            tokens = index._tokenize(list(texts))
            retriever = _bm25s().BM25(k1=k1, b=b, method="lucene")
            retriever.index(tokens, show_progress=False)
            index._retriever = retriever
        return index

    def _tokenize(self, texts: list[str]) -> Any:
        return _bm25s().tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def params(self) -> dict[str, float]:
        r = self._retriever
        return {"k1": float(r.k1), "b": float(r.b)} if r is not None else {}

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top `k` (chunk id, score) with a positive score; `allowed` (ids) restricts the search before ranking."""
        if self._retriever is None or k <= 0:
            return []
        tokens = _bm25s().tokenize(
            [query], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )
        token_ids = self._retriever.get_tokens_ids(tokens[0])
        if not token_ids:
            return []
        scores = self._retriever.get_scores_from_ids(token_ids)
        if allowed is not None:
            scores = np.where(np.isin(self.ids, allowed), scores, 0.0)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        # Best first; equal scores in id order, so results are reproducible.
        order = sorted(candidates.tolist(), key=lambda row: (-scores[row], self.ids[row]))
        return [(int(self.ids[row]), float(scores[row])) for row in order]

    def save(self, folder: Path) -> None:
        """Write into `folder`, which must not exist yet, and fsync it: the caller then points readers at it."""
        folder.mkdir(parents=True)
        np.save(folder / IDS_FILE, self.ids, allow_pickle=False)
        if self._retriever is not None:
            self._retriever.save(str(folder), allow_pickle=False)
        info = {
            "format": FORMAT,
            "language": self.language,
            "count": len(self.ids),
            "empty": self._retriever is None,
            **self.params,
        }
        (folder / INFO_FILE).write_text(json.dumps(info), encoding="utf-8")
        for path in [*folder.iterdir(), folder]:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def info(folder: Path) -> dict[str, Any]:
        """What `save` recorded about the index (format, count, k1, b), without loading it."""
        try:
            info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeywordIndexError(f"{folder}: unreadable keyword index ({exc})") from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise KeywordIndexError(f"{folder}: not a keyword index of format {FORMAT}")
        return info

    @classmethod
    def load(cls, folder: Path) -> Bm25Index:
        """Read arrays with allow_pickle=False and JSON: loading never runs code from the workspace."""
        info = cls.info(folder)
        try:
            ids = np.load(folder / IDS_FILE, allow_pickle=False)
            retriever = (
                None if info["empty"] else _bm25s().BM25.load(str(folder), allow_pickle=False, show_progress=False)
            )
        except KeywordIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeywordIndexError(f"{folder}: unreadable keyword index ({exc})") from exc
        if ids.ndim != 1 or len(ids) != info["count"]:
            raise KeywordIndexError(f"{folder}: chunk id list does not match the index")
        if retriever is not None and int(retriever.scores["num_docs"]) != len(ids):
            raise KeywordIndexError(f"{folder}: {retriever.scores['num_docs']} documents indexed for {len(ids)} ids")
        return cls(ids, retriever, info.get("language", "english"))
