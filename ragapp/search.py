"""Dense retrieval: the question's vector against the index, hits joined with their chunk rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ragapp.embedding import Embedder
from ragapp.store import Store
from ragapp.vector_index import WorkspaceIndex


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    score: float
    text: str
    source: str
    title: str | None
    heading: str | None
    anchor: str | None
    page: int | None
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dense_search(embedder: Embedder, index: WorkspaceIndex, store: Store, query: str, k: int) -> list[SearchHit]:
    vector = embedder.embed([query])
    # Ask for a few extra: ids deleted by a concurrent ingest (not yet saved) are skipped, not returned.
    found = index.search(vector, k + 8)
    rows = store.chunks_with_documents([chunk_id for chunk_id, _ in found])
    hits = []
    for chunk_id, score in found:
        if chunk_id not in rows:
            continue
        chunk, doc = rows[chunk_id]
        hits.append(
            SearchHit(
                chunk_id=chunk_id,
                score=round(score, 6),
                text=chunk.text,
                source=doc.source,
                title=doc.title,
                heading=chunk.heading,
                anchor=chunk.anchor,
                page=chunk.page,
                start=chunk.start_char,
                end=chunk.end_char,
            )
        )
    return hits[:k]
