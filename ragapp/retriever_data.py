"""Training examples for the retriever (`ragapp reranker train`, `ragapp embedder train`).

Three sources give questions with the passage that answers them:

- a BEIR collection's qrels (`beir`): its corpus is ingested into the workspace, documents keyed by `_id`;
- a JSONL file (`read_examples`): `{query, positive, negatives?}` with texts, or `{question, sources}` like an
  evaluation dataset, whose answer is the best-ranked passage of those documents;
- the workspace itself (`synthetic`): the generator writes a question for sampled chunks (doc2query), and a
  question is kept only if retrieval finds its chunk again, which drops questions too vague to have one answer.

Hard negatives are mined with ragapp's own first stage (hybrid search, never the reranker): passages that
rank high for the question but come from other documents. Each example also keeps the first stage's
ranking, with the answer marked, so training can measure on held-out questions how much reranking helps
and how to blend the two scores.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ragapp.errors import UsageError
from ragapp.training_data import TrainingDataError, read_records

if TYPE_CHECKING:
    from ragapp.app import App
    from ragapp.search import SearchHit

MINING_DEPTH = 30  # first-stage passages read per question: negatives come from these


@dataclass(frozen=True)
class Wanted:
    """A question and what answers it: passage texts, or documents (sources) whose best passage does."""

    query: str
    origin: str  # "file:line", "qrels:QUERY_ID", "chunk N": where an error or a report points
    positives: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    chunk_id: int | None = None  # synthetic: the chunk the question was written from


@dataclass
class Example:
    query: str
    positive: str
    negatives: list[str]
    origin: str
    ranking: list[tuple[str, bool]] = field(default_factory=list)  # first stage's top passages, answer marked
    ranked_negatives: list[str] = field(default_factory=list)  # given, then the first stage's from other documents

    def hardest(self, n: int) -> list[str]:
        """`n` negatives a reranker must get past: the given ones, then the first stage's best-ranked passages
        of other documents (the mined random sample when there is no ranking)."""
        return self.ranked_negatives[:n] or self.negatives[:n]

    @property
    def key(self) -> str:
        """What splits are decided by: the question, so one question never lands in two splits."""
        return self.query


def read_examples(path: str | Path) -> list[Wanted]:
    """A JSONL file of `{query, positive, negatives?}` or `{question, sources}`; a bad line stops with its number."""
    out = []
    for record in read_records(path):
        data = record.data
        query = record.text("query", required=False) or record.text("question", required=False)
        if query is None:
            raise record.error("needs `query` (with `positive`) or `question` (with `sources`)")
        if not query.strip():
            raise record.error("the question is empty")
        if "positive" in data:
            positive = record.text("positive") or ""
            negatives = data.get("negatives", [])
            if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
                raise record.error("`negatives` must be a list of non-empty strings")
            out.append(Wanted(query, record.where, positives=(positive,), negatives=tuple(negatives)))
        elif "sources" in data or "source_page" in data:
            sources = data.get("sources", data.get("source_page"))
            if isinstance(sources, str):
                sources = [sources]
            if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
                raise record.error("`sources` must be a non-empty string or list of strings")
            out.append(Wanted(query, record.where, sources=tuple(sources)))
        else:
            raise record.error("needs `positive` (the answering passage) or `sources` (the answering documents)")
    return out


def beir_wanted(app: App, folder: str | Path, split: str, progress: bool = False) -> list[Wanted]:
    """The judged queries of a BEIR split; the corpus is ingested into `app`'s workspace first (only changed
    documents are embedded again, so a workspace kept for `ragapp bench retrieval` is reused)."""
    from ragapp.evals.bench import judged_queries

    collection, judged, todo = judged_queries(folder, split)
    app.ingest_documents(collection.documents(), progress=progress)
    return [
        Wanted(text, f"qrels:{qid}", sources=tuple(sorted(d for d, grade in judged[qid].items() if grade >= 1)))
        for qid, text in todo
    ]


# -- synthetic questions (doc2query) -----------------------------------------------------------------

# The instruction comes after the passage: put first, SmolLM2-135M answered "What is the answer to this
# question?" for a third of SciFact's abstracts; put last, 38 of 48 questions found their chunk again (25 before).
_QUESTION_PROMPT = "{passage}\n\nWrite a question that the text above answers. Write only the question."
_QUESTION = re.compile(r"^\W*(?:question\s*\d*\s*[:.)-]\s*)?(.{8,300}?\?)", re.IGNORECASE | re.DOTALL)
PASSAGE_CHARS = 800  # about a default 200-token chunk; 1,500 kept no more questions (25 of 48) and took longer
MIN_CHUNK_CHARS = 200  # shorter chunks (headings, contents lines) rarely answer a question of their own


def synthetic_wanted(
    app: App, count: int, seed: int = 0, keep_top: int = 5, progress: bool = False
) -> tuple[list[Wanted], dict[str, int]]:
    """Questions the generator writes for up to `count` chunks sampled from the workspace, each kept only if
    the first stage ranks its chunk in the top `keep_top` (round-trip consistency). Returns them and counts
    of what was generated, unusable and dropped."""
    from ragapp.generators.base import GenerationConfig

    chunks = _sampled_chunks(app, count, seed)
    if not chunks:
        raise UsageError("the workspace has no passage long enough to write a question about; ingest documents first")
    generator = app.generator
    config = GenerationConfig(max_new_tokens=48, temperature=0.0, stop=["\n"])
    stats = {"chunks": len(chunks), "questions": 0, "unusable": 0, "not_found_again": 0}
    out: list[Wanted] = []
    bar = tqdm(total=len(chunks), desc="questions", unit="chunk", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(chunks), 8):
        batch = chunks[start : start + 8]
        messages = [
            [{"role": "user", "content": _QUESTION_PROMPT.format(passage=text[:PASSAGE_CHARS])}] for _, text in batch
        ]
        for (chunk_id, _), raw in zip(batch, generator.generate_batch(messages, config), strict=True):
            question = _question(raw)
            if question is None:
                stats["unusable"] += 1
                continue
            stats["questions"] += 1
            found = [h.chunk_id for h in app.search(question, keep_top, mode="hybrid", rerank=False)]
            if chunk_id not in found:
                stats["not_found_again"] += 1
                continue
            out.append(Wanted(question, f"chunk {chunk_id}", chunk_id=chunk_id))
        bar.update(len(batch))
        bar.set_postfix(kept=len(out))
    bar.close()
    return out, stats


def _question(raw: str) -> str | None:
    """The generated question, or None when the model wrote something else."""
    match = _QUESTION.match(raw.strip())
    return " ".join(match.group(1).split()) if match else None


def _sampled_chunks(app: App, count: int, seed: int) -> list[tuple[int, str]]:
    """Up to `count` chunks of at least MIN_CHUNK_CHARS, spread over the documents, chosen by `seed`."""
    store = app.open_store(create=False)
    by_document: dict[str, list[tuple[int, str]]] = {}
    for batch in store.index_texts():
        rows = store.chunks_with_documents([chunk_id for chunk_id, _ in batch])
        for chunk_id, text in batch:
            chunk, document = rows[chunk_id]
            if len(chunk.text) >= MIN_CHUNK_CHARS:
                by_document.setdefault(document.source, []).append((chunk_id, text))
    rng = random.Random(seed)
    pools = [rng.sample(chunks, len(chunks)) for _, chunks in sorted(by_document.items())]
    rng.shuffle(pools)
    picked: list[tuple[int, str]] = []
    while len(picked) < count and any(pools):  # round robin: every document before a second chunk of any
        for pool in pools:
            if pool and len(picked) < count:
                picked.append(pool.pop())
    return picked


# -- mining ------------------------------------------------------------------------------------------


def mine(
    app: App, wanted: Sequence[Wanted], negatives: int = 4, seed: int = 0, progress: bool = False
) -> tuple[list[Example], dict[str, int]]:
    """Examples with hard negatives from the first stage's top MINING_DEPTH passages (other documents than
    the answer's). Questions whose answering document is not in the workspace are counted and left out."""
    from ragapp.store import embedding_text

    store = app.open_store(create=False) if app.has_store() else None
    searchable = store is not None and store.has_chunks()
    stats = {"questions": len(wanted), "answer_not_found": 0, "too_few_negatives": 0}
    out: list[Example] = []
    for item in tqdm(wanted, desc="mining", unit="q", disable=not progress, dynamic_ncols=True):
        hits = app.search(item.query, MINING_DEPTH, mode="hybrid", rerank=False) if searchable else []
        texts = [embedding_text(h.title, h.heading, h.text) for h in hits]
        answer = _answer_position(item, hits, texts)
        if answer is None:
            positive = item.positives[0] if item.positives else _first_chunk(app, item)
            if positive is None:
                stats["answer_not_found"] += 1
                continue
        else:
            positive = texts[answer]
        answering = {h.source for h in hits if _answers(item, h)}
        pool = [t for h, t in zip(hits, texts, strict=True) if h.source not in answering and t != positive]
        chosen = list(item.negatives) + _pick(pool, max(0, negatives - len(item.negatives)), item.query, seed)
        if not chosen:
            stats["too_few_negatives"] += 1
            continue
        ranking = [(t, n == answer) for n, t in enumerate(texts)]
        ranked = list(dict.fromkeys([*item.negatives, *pool]))
        out.append(Example(item.query, positive, chosen, item.origin, ranking, ranked))
    return out, stats


def _answers(item: Wanted, hit: SearchHit) -> bool:
    from ragapp.evals.metrics import source_matches  # imported when used: it loads the ROUGE and BLEU scorers

    if item.chunk_id is not None:
        return hit.chunk_id == item.chunk_id
    return any(source_matches(s, hit.source, hit.anchor) for s in item.sources)


def _answer_position(item: Wanted, hits: Sequence[SearchHit], texts: Sequence[str]) -> int | None:
    """Where the answer is in the first stage's ranking: its best passage, or a given positive text."""
    for n, (hit, text) in enumerate(zip(hits, texts, strict=True)):
        if item.positives:
            if text in item.positives or hit.text in item.positives:
                return n
        elif _answers(item, hit):
            return n
    return None


def _first_chunk(app: App, item: Wanted) -> str | None:
    """The answering document's first passage, when the first stage did not rank any of it."""
    from ragapp.evals.metrics import source_matches
    from ragapp.store import embedding_text

    store = app.open_store(create=False)
    if item.chunk_id is not None:
        rows = store.chunks_with_documents([item.chunk_id])
    else:
        documents = store.document_ids(lambda d: any(source_matches(s, d.source, None) for s in item.sources))
        ids = store.chunk_ids_of(documents)[:1]
        rows = store.chunks_with_documents(ids) if ids else {}
    for chunk, document in rows.values():
        return embedding_text(document.title, chunk.heading, chunk.text)
    return None


def _pick(pool: list[str], n: int, query: str, seed: int) -> list[str]:
    """`n` negatives from the pool, the same ones for the same question and seed."""
    unique = list(dict.fromkeys(pool))
    if len(unique) <= n:
        return unique
    rng = random.Random(int(hashlib.sha256(f"{seed}\0{query}".encode()).hexdigest()[:16], 16))
    return rng.sample(unique, n)


def check_enough(examples: Iterable[Example], stats: dict[str, int], minimum: int = 4) -> None:
    count = sum(1 for _ in examples)
    if count < minimum:
        details = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in stats.items() if v)
        raise TrainingDataError(f"only {count} usable training example(s) ({details}); at least {minimum} are needed")
