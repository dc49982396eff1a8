"""Retrieval benchmark on a BEIR collection: ingest the corpus, search every judged query, score.

The corpus goes through the same ingest and search code as a user's documents, so the numbers
measure ragapp itself. Passages are chunks: a document's score is that of its best chunk (MaxP).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ragapp.connectors.beir import BeirCollection, CollectionError
from ragapp.evals.trec import DEFAULT_METRICS, evaluate, parse_metric, read_qrels, write_trec_run
from tqdm import tqdm

from ragapp.app import App
from ragapp.errors import UsageError
from ragapp.search import MODES, Mode


@dataclass
class ModeResult:
    mode: str
    metrics: dict[str, float]
    queries_per_second: float
    search_seconds: float


@dataclass
class BenchResult:
    dataset: str
    split: str
    queries: int
    documents: int
    chunks: int
    ingest_seconds: float
    chunks_embedded: int
    modes: list[ModeResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for mode in out["modes"]:
            mode["metrics"] = {k: round(v, 4) for k, v in mode["metrics"].items()}
            mode["queries_per_second"] = round(mode["queries_per_second"], 2)
            mode["search_seconds"] = round(mode["search_seconds"], 3)
        out["ingest_seconds"] = round(self.ingest_seconds, 2)
        return out


def judged_queries(
    folder: str | Path, split: str
) -> tuple[BeirCollection, dict[str, dict[str, int]], list[tuple[str, str]]]:
    """The collection, the judgements of `split`'s queries that have a relevant document, and those queries'
    (id, text); a query without text is a problem of the collection, a folder that is not one an error."""
    try:
        collection = BeirCollection.open(folder)
        qrels = read_qrels(collection.qrels_path(split))
    except (CollectionError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(str(exc)) from None
    queries = collection.queries()
    judged = {q: j for q, j in qrels.items() if any(rel >= 1 for rel in j.values())}
    missing = sorted(set(judged) - set(queries))
    if missing:
        collection.problems.append(f"{len(missing)} judged queries have no text in queries.jsonl (e.g. {missing[0]})")
    todo = [(qid, queries[qid]) for qid in judged if qid in queries]
    if not todo:
        raise UsageError(f"{collection.folder}: no judged query of split {split!r} has text in queries.jsonl")
    return collection, judged, todo


def bench_retrieval(
    folder: str | Path,
    split: str = "test",
    modes: Sequence[str] = MODES,
    keep: Path | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    reranked: bool = False,
    runs_dir: Path | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    progress: bool = False,
) -> BenchResult:
    """Ingest `folder`'s corpus into a temporary workspace (or `keep`, reused by later runs: only
    changed documents are embedded again), then search each judged query of `split` in each mode;
    with `reranked`, each mode a second time through the configured reranker (`MODE+rerank`)."""
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"unknown search mode {mode!r} (use {', '.join(MODES)})")
    searched = [cast(Mode, mode) for mode in modes]  # each checked against MODES just above
    try:
        parsed = [parse_metric(m) for m in metrics]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    collection, judged, todo = judged_queries(folder, split)

    with ExitStack() as stack:
        workspace = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ragapp-bench-")))
        app = stack.enter_context(App(workspace, config=config))
        report = app.ingest_documents(collection.documents(), progress=progress)
        status = app.status()
        if status["chunks"] == 0:
            raise UsageError(f"{collection.folder}: the corpus has no text to index")
        depth_docs = max(k for _, k in parsed)
        result = BenchResult(
            dataset=collection.name,
            split=split,
            queries=len(todo),
            documents=status["documents"],
            chunks=status["chunks"],
            ingest_seconds=report.seconds,
            chunks_embedded=report.chunks_embedded,
            problems=collection.problems + [f"{p.source}: {p.reason}" for p in report.problems],
            config={
                "embedding": app.embedder.model_id,
                "chunking": app.config.chunking.model_dump(),
                "index": app.config.index.model_dump(),
                "retrieval": app.config.retrieval.model_dump(exclude={"k"}),
            },
        )
        chunks_per_doc = status["chunks"] / max(status["documents"], 1)
        first_depth = min(status["chunks"], math.ceil(depth_docs * chunks_per_doc * 1.5) + 10)
        for mode, rerank in [(m, r) for m in searched for r in ((False, True) if reranked else (False,))]:
            name = f"{mode}+rerank" if rerank else mode
            app.search(todo[0][1], 1, mode=mode, rerank=rerank)  # load models and indexes before the clock starts
            run: dict[str, dict[str, float]] = {}
            started = time.perf_counter()
            for qid, text in tqdm(todo, desc=name, unit="q", disable=not progress, dynamic_ncols=True):
                run[qid] = _documents(app, text, mode, rerank, depth_docs, first_depth, status["chunks"])
            seconds = time.perf_counter() - started
            if runs_dir is not None:
                runs_dir.mkdir(parents=True, exist_ok=True)
                write_trec_run(runs_dir / f"{name}.trec", run, f"ragapp-{name}")
            scored = {qid: judged[qid] for qid, _ in todo}
            result.modes.append(ModeResult(name, evaluate(run, scored, metrics), len(todo) / seconds, seconds))
        return result


def _documents(app: App, query: str, mode: Mode, rerank: bool, wanted: int, depth: int, total: int) -> dict[str, float]:
    """The best `wanted` documents (score of their best chunk), searching deeper while chunks crowd them out."""
    while True:
        hits = app.search(query, depth, mode=mode, rerank=rerank)
        docs: dict[str, float] = {}
        for hit in hits:
            if hit.source not in docs:
                docs[hit.source] = hit.score
                if len(docs) == wanted:
                    return docs
        if len(hits) < depth or depth >= total:
            return docs
        depth = min(total, depth * 2)
