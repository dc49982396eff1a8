"""The workspace's BM25 index, kept in step with the SQL store.

bm25s indexes cannot be edited, so a writer rebuilds the whole index from SQL whenever the set of
chunk ids differs from the one it was built from (chunk rows are immutable, so equal ids mean equal
texts). Each build goes into a new folder `bm25-<n>`; the `keyword_index` meta row in SQL names the
current one and is switched in one commit, so readers see the old index or the new one, whole.
A crash leaves at most an unreferenced folder, removed by the next writer.

On a shared database (PostgreSQL) each machine keeps its own copy of the folder the pointer names:
a reader that lacks it builds it from SQL under the same name (`materialise`), without moving the
pointer, so machines never take turns rebuilding after each other.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ragapp.indexes.bm25_index import IDS_FILE, Bm25Index, KeywordIndexError
from ragapp.store import Store

log = logging.getLogger(__name__)

POINTER_KEY = "keyword_index"
PREFIX = "bm25-"


class WorkspaceKeywords:
    def __init__(self, workspace: Path, store: Store, k1: float, b: float):
        self.workspace = workspace
        self.store = store
        self.k1 = k1
        self.b = b

    def pointer(self) -> str | None:
        return self.store.get_meta(POINTER_KEY)

    def load(self) -> Bm25Index | None:
        """The current saved index, or None if there is none, or it was built with other BM25 parameters."""
        for _ in range(3):  # a writer may replace the folder between reading the pointer and the files
            name = self.pointer()
            if name is None or not self._params_match(name):
                return None
            try:
                return Bm25Index.load(self.workspace / name)
            except KeywordIndexError as exc:
                log.info("keyword index %s not loaded: %s", name, exc)
                if self.pointer() == name:
                    return None
        return None

    def build(self) -> Bm25Index:
        """An index of every chunk now in SQL (pending ones too: keyword search needs no vectors)."""
        ids: list[int] = []
        texts: list[str] = []
        for batch in self.store.index_texts():
            for chunk_id, text in batch:
                ids.append(chunk_id)
                texts.append(text)
        return Bm25Index.build(ids, texts, k1=self.k1, b=self.b)

    def sync(self) -> bool:
        """Writers only (under the ingest lock): rebuild and switch if SQL's chunks differ. True if rebuilt."""
        name = self.pointer()
        current = self._saved_ids(name)
        wanted = self.store.chunk_ids()
        if current is not None and set(current.tolist()) == wanted and self._params_match(name):
            self._remove_unreferenced(name)
            return False
        started = time.monotonic()
        index = self.build()
        new_name = f"{PREFIX}{time.time_ns()}"
        index.save(self.workspace / new_name)
        self.store.set_meta(POINTER_KEY, new_name)
        self._remove_unreferenced(new_name)
        log.info("keyword index rebuilt: %d chunks in %.1f s", len(index), time.monotonic() - started)
        return True

    def materialise(self) -> Bm25Index | None:
        """Under the workspace lock: build the index the pointer names, if this folder lacks it. None if
        there is no pointer: then `sync` is what is needed."""
        name = self.pointer()
        if name is None or (self.workspace / name).exists():
            return None
        index = self.build()
        building = self.workspace / f".{name}.{time.time_ns()}"
        index.save(building)
        building.rename(self.workspace / name)  # readers of this folder see it whole
        self._remove_unreferenced(name)
        log.info("keyword index %s built here from SQL: %d chunks", name, len(index))
        return index

    def _saved_ids(self, name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        try:
            return np.load(self.workspace / name / IDS_FILE, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def _params_match(self, name: str | None) -> bool:
        if name is None:
            return False
        try:
            info = Bm25Index.info(self.workspace / name)
        except KeywordIndexError:
            return False
        return bool(info.get("empty")) or (info.get("k1"), info.get("b")) == (self.k1, self.b)

    def _remove_unreferenced(self, keep: str | None) -> None:
        for path in self.workspace.glob(f"{PREFIX}*"):
            if path.name != keep and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
