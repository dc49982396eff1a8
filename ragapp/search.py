"""Retrieval: dense (FAISS or pgvector), keyword (BM25) or both fused, restricted by metadata filters.

Filters become a set of allowed documents *before* either index ranks anything (FAISS and BM25 get
their chunk ids, pgvector joins them in its SQL statement), so a filtered query returns k passages
whenever k chunks pass the filter. Optional query-side steps use the generator:
multi-query expansion (more phrasings of the question, each retrieved and fused) and HyDE (a
hypothetical answer passage that is searched for alongside the question).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from wcmatch import glob as wcglob

from ragapp.errors import UsageError
from ragapp.generators.base import GenerationConfig, Generator
from ragapp.indexes.fusion import maximal_marginal_relevance, reciprocal_rank_fusion, weighted_score_fusion

if TYPE_CHECKING:
    from ragapp.config import RetrievalSettings
    from ragapp.embedding import Embedder
    from ragapp.indexes.bm25_index import Bm25Index
    from ragapp.reranker import Reranker
    from ragapp.store import DocumentRow, Store
    from ragapp.vector_index import Restriction, VectorIndex

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
NO_RERANKER = "reranking needs a reranker: set retrieval.reranker (train one with `ragapp reranker train`)"


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


FILTER_KEYS = ("source", "kind", "document", "meta.NAME")


@dataclass(frozen=True)
class Filters:
    """Which documents a search may return. Values of one key are alternatives (OR); keys combine with AND.

    `source` values are globs matched against the end of the stored path (`*.md`, `docs/**`,
    `/abs/path/file.txt`); `kind` is the document type (markdown, pdf, html, text...) or the file
    suffix (md, htm, txt...); `document` a document id;
    `metadata` compares a document metadata value, as text, with each given value.
    """

    source: tuple[str, ...] = ()
    kind: tuple[str, ...] = ()
    document: tuple[int, ...] = ()
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.source or self.kind or self.document or self.metadata)

    @classmethod
    def parse(cls, items: Iterable[str]) -> Filters:
        """From `KEY=VALUE` strings (the CLI's `--filter`): source, kind, document or meta.NAME."""
        values: dict[str, list[str]] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key or not value:
                raise UsageError(f"filter {item!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
            if key not in ("source", "kind", "document") and not (key.startswith("meta.") and len(key) > 5):
                raise UsageError(f"filter {item!r}: unknown key {key!r} (use {', '.join(FILTER_KEYS)})")
            values.setdefault(key, []).append(value)
        return cls.of(values)

    @classmethod
    def of(cls, spec: Filters | Mapping[str, Any] | None) -> Filters:
        """From a mapping like {"kind": "pdf", "source": ["docs/*"], "meta.team": "infra"} (the Python API)."""
        if spec is None:
            return cls()
        if isinstance(spec, Filters):
            return spec

        def many(value: Any) -> tuple[str, ...]:
            items = value if isinstance(value, list | tuple | set) else [value]
            return tuple(str(v) for v in items)

        documents = []
        for value in many(spec.get("document", ())):
            try:
                documents.append(int(value))
            except ValueError:
                raise UsageError(f"filter document={value!r}: a document id is a whole number") from None
        unknown = [k for k in spec if k not in ("source", "kind", "document") and not k.startswith("meta.")]
        if unknown:
            raise UsageError(f"unknown filter key {unknown[0]!r} (use {', '.join(FILTER_KEYS)})")
        metadata = tuple((k[5:], many(v)) for k, v in sorted(spec.items()) if k.startswith("meta."))
        return cls(
            source=many(spec.get("source", ())),
            kind=tuple(k.lower().lstrip(".") for k in many(spec.get("kind", ()))),
            document=tuple(documents),
            metadata=metadata,
        )

    def matches(self, doc: DocumentRow) -> bool:
        if self.document and doc.id not in self.document:
            return False
        if self.kind and doc.kind not in self.kind and _suffix(doc.source) not in self.kind:
            return False
        if self.source and not any(_source_matches(doc.source, pattern) for pattern in self.source):
            return False
        meta = doc.doc_metadata or {}
        return all(name in meta and str(meta[name]) in wanted for name, wanted in self.metadata)


def _suffix(source: str) -> str:
    return source.rpartition(".")[2].lower() if "." in source.rpartition("/")[2] else ""


_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTMATCH | wcglob.BRACE


def _source_matches(source: str, pattern: str) -> bool:
    if wcglob.globmatch(source, pattern, flags=_GLOB_FLAGS):
        return True
    return not pattern.startswith("/") and wcglob.globmatch(source, "**/" + pattern, flags=_GLOB_FLAGS)


@dataclass
class SearchParts:
    """What a search may need, each opened only if this search uses it (bm25 mode never loads a model)."""

    store: Store
    settings: RetrievalSettings
    embedder: Callable[[], Embedder]
    vectors: Callable[[], VectorIndex]
    keywords: Callable[[], Bm25Index]
    generator: Callable[[], Generator]
    reranker: Callable[[], Reranker] | None = None  # None: no reranker configured


def search(
    parts: SearchParts,
    query: str,
    k: int,
    mode: Mode | None = None,
    filters: Filters | None = None,
    rerank: bool | None = None,
) -> list[SearchHit]:
    """`rerank`: reorder the fused candidates with the reranker (None: whenever one is configured)."""
    settings = parts.settings
    mode = mode or settings.mode
    if mode not in MODES:
        raise UsageError(f"unknown search mode {mode!r} (use {', '.join(MODES)})")
    if rerank is None:
        rerank = parts.reranker is not None
    elif rerank and parts.reranker is None:
        raise UsageError(NO_RERANKER)
    restrict = None
    if filters:
        from ragapp.vector_index import Restriction

        restrict = Restriction(parts.store, parts.store.document_ids(filters.matches))
        if not restrict.documents:
            return []

    queries = [query]
    if settings.multi_query:
        queries += expand_query(parts.generator(), query, settings.multi_query)
    hypothetical = hypothetical_passage(parts.generator(), query) if settings.hyde else None
    # Fusion needs depth: a chunk ranked 30th by both retrievers can beat one ranked 1st by only one.
    fusing = mode == "hybrid" or len(queries) > 1
    depth = max(k, settings.candidates) if fusing or settings.mmr else k + 8
    if rerank:
        depth = max(depth, settings.rerank_candidates)

    rankings: list[list[tuple[int, float]]] = []
    weights: list[float] = []
    for n, q in enumerate(queries):
        hyde = hypothetical if n == 0 else None
        if mode in ("dense", "hybrid"):
            rankings.append(by_score(_dense(parts, q, hyde, depth, restrict)))
            weights.append(settings.dense_weight if mode == "hybrid" else 1.0)
        if mode in ("bm25", "hybrid"):
            text = f"{q} {hyde}" if hyde else q
            allowed = None if restrict is None else restrict.chunk_ids()
            rankings.append(
                by_score(parts.keywords().search(text, depth, allowed)) if allowed is None or len(allowed) else []
            )
            weights.append(1.0 - settings.dense_weight if mode == "hybrid" else 1.0)
    if len(rankings) == 1:
        ranked = rankings[0]
    elif settings.fusion == "rrf":
        ranked = reciprocal_rank_fusion(rankings, k=settings.rrf_k, weights=weights)
    else:
        ranked = weighted_score_fusion(rankings, weights=weights)
    rows = parts.store.chunks_with_documents([chunk_id for chunk_id, _ in ranked[: depth + 8]])
    # Ids deleted by a concurrent ingest (index file not yet replaced) are skipped, not returned.
    ranked = [(chunk_id, score) for chunk_id, score in ranked if chunk_id in rows]
    if rerank and parts.reranker is not None and ranked:
        ranked = _reranked(parts.reranker(), query, ranked, settings.rerank_candidates, rows)
    if settings.mmr and len(ranked) > 1:
        ranked = _diversify(parts, query, ranked[:depth], rows, k)
    return [_hit(chunk_id, score, *rows[chunk_id]) for chunk_id, score in ranked[:k]]


def by_score(ranking: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Best score first, ties by chunk id: indexes return equal scores (a passage stored twice) in any order,
    and that order must not change between two searches, nor between PostgreSQL query plans."""
    return sorted(ranking, key=lambda pair: (-pair[1], pair[0]))


def _dense(
    parts: SearchParts, query: str, hypothetical: str | None, depth: int, restrict: Restriction | None
) -> list[tuple[int, float]]:
    index = parts.vectors()  # first: an index that cannot answer fails before the model loads
    embedder = parts.embedder()
    vector = embedder.embed_queries([query] if hypothetical is None else [query, hypothetical])
    if len(vector) > 1:  # HyDE: the question and its hypothetical answer, averaged
        vector = vector.mean(axis=0, keepdims=True)
        vector /= np.linalg.norm(vector)
    return index.search(vector, depth, restrict)


def _reranked(
    reranker: Reranker, query: str, ranked: list[tuple[int, float]], candidates: int, rows: dict[int, Any]
) -> list[tuple[int, float]]:
    """The first `candidates` in the reranker's order, then the rest in their first-stage order, scored below
    them. Each passage is read as it was embedded (with its title and heading), which situates a short chunk
    for the cross-encoder as for the embedder."""
    from ragapp.store import embedding_text

    pool, rest = ranked[:candidates], ranked[candidates:]
    texts = [embedding_text(rows[i][1].title, rows[i][0].heading, rows[i][0].text) for i, _ in pool]
    reordered = reranker.rerank(query, pool, texts)
    floor = min(score for _, score in reordered) - 1.0
    return reordered + [(chunk_id, floor - n / len(rest)) for n, (chunk_id, _) in enumerate(rest)]


def _diversify(
    parts: SearchParts, query: str, ranked: list[tuple[int, float]], rows: dict[int, Any], k: int
) -> list[tuple[int, float]]:
    """Reorder the candidates by MMR; chunks without a stored vector (not yet embedded) are embedded here."""
    from ragapp.store import embedding_text

    embedder = parts.embedder()
    ids = [chunk_id for chunk_id, _ in ranked]
    stored = parts.vectors().stored_vectors(ids)
    vectors = np.zeros((len(ids), embedder.dim), dtype=np.float32)
    have = [n for n, i in enumerate(ids) if i in stored]
    if have:
        vectors[have] = np.stack([stored[ids[n]] for n in have])
    missing = [n for n, i in enumerate(ids) if i not in stored]
    if missing:
        texts = [embedding_text(rows[ids[n]][1].title, rows[ids[n]][0].heading, rows[ids[n]][0].text) for n in missing]
        vectors[missing] = embedder.embed(texts)
    order = maximal_marginal_relevance(embedder.embed_queries([query])[0], vectors, k, parts.settings.mmr_lambda)
    return [ranked[n] for n in order]


def _hit(chunk_id: int, score: float, chunk: Any, doc: Any) -> SearchHit:
    return SearchHit(
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


# -- query-side expansion with the generator ---------------------------------------------------------

_EXPANSION = GenerationConfig(max_new_tokens=96, temperature=0.0, stop=["\n\n"])
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)]|query\s*\d*:)\s*", re.IGNORECASE)


def expand_query(generator: Generator, query: str, n: int) -> list[str]:
    """Up to `n` other phrasings of `query`, written by the generator; duplicates and echoes dropped."""
    messages = [
        {"role": "system", "content": "You write search queries."},
        {
            "role": "user",
            "content": f"Write {n} different short search queries for finding passages that answer this "
            f"question. One query per line, nothing else.\n\nQuestion: {query}",
        },
    ]
    text = generator.generate(messages, _EXPANSION.model_copy(update={"stop": []}))
    seen = {query.strip().lower()}
    out = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line).strip().strip('"')
        if len(line) > 3 and line.lower() not in seen:
            seen.add(line.lower())
            out.append(line)
    return out[:n]


def hypothetical_passage(generator: Generator, query: str) -> str:
    """HyDE (Gao et al. 2022): a passage that would answer `query`; its wording is closer to the documents'."""
    messages = [
        {"role": "system", "content": "You write short, factual encyclopedia passages."},
        {"role": "user", "content": f"Write a short passage that answers this question.\n\nQuestion: {query}"},
    ]
    return generator.generate(messages, _EXPANSION.model_copy(update={"max_new_tokens": 128})).strip()
