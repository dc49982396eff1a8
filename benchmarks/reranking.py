"""What a trained reranker adds: quality against the first stage (the named baseline) in the same run, and
the latency it adds per query.

    # BEIR collections (nDCG@10, recall, MRR@10), with and without the reranker:
    .venv/bin/python benchmarks/reranking.py beir ../shared/data/beir/scifact --reranker models/scifact-rr \\
        --keep /tmp/bench/scifact
    # FAQ questions against their documentation (gold: the answer's page), hit@1, MRR@10, nDCG@10, for
    # dense, BM25 and hybrid, and hybrid reranked when --reranker is given:
    .venv/bin/python benchmarks/reranking.py faq ../shared/data/faq_debian.jsonl /usr/share/doc/debian/FAQ \\
        --reranker models/debian-rr --keep /tmp/bench/debian
    .venv/bin/python benchmarks/reranking.py faq ../shared/data/faq_django.jsonl \\
        /usr/share/doc/python-django-doc/html --reranker models/django-rr --keep /tmp/bench/django
    # Latency of reranking N candidates (p50/p99 over the queries, after a warm-up), float32 vs the auto dtype:
    .venv/bin/python benchmarks/reranking.py latency /tmp/bench/debian ../shared/data/faq_debian.jsonl \\
        --reranker models/debian-rr

Train the reranker first (`ragapp reranker train`, commands in docs/retrieval.md). Quality is deterministic;
latency is printed with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragapp.evals.bench import bench_retrieval
from ragapp.evals.metrics import source_matches

from benchmarks.answers import DJANGO_EXCLUDE
from benchmarks.machine import cpu_name
from ragapp import App


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    beir = sub.add_parser("beir")
    beir.add_argument("collection", type=Path)
    beir.add_argument("--split", default="test")
    faq = sub.add_parser("faq")
    faq.add_argument("questions", type=Path, help="JSONL with question and source_page (or sources)")
    faq.add_argument("docs", type=Path, help="the documentation folder the questions are about")
    faq.add_argument("--exclude", action="store_true", help="leave the gold pages out of the corpus")
    latency = sub.add_parser("latency")
    latency.add_argument("workspace", type=Path, help="an ingested workspace")
    latency.add_argument("questions", type=Path, help="JSONL with a question (or query) per line")
    latency.add_argument("--queries", type=int, default=50)
    latency.add_argument("--candidates", type=int, default=50)
    for p in (beir, faq, latency):
        p.add_argument("--reranker", type=Path, required=p is not faq, help="a trained reranker folder")
    for p in (beir, faq):
        p.add_argument("--keep", type=Path, help="workspace to ingest into and reuse")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}")
    if args.command == "beir":
        run_beir(args)
    elif args.command == "faq":
        run_faq(args)
    else:
        run_latency(args)


def run_beir(args: argparse.Namespace) -> None:
    config = {"retrieval": {"reranker": str(args.reranker.resolve())}}
    result = bench_retrieval(
        args.collection, args.split, ("hybrid",), keep=args.keep, config=config, reranked=True, progress=True
    )
    base = result.modes[0].metrics
    print(f"{result.dataset} ({result.split}), {result.queries} queries")
    for mode in result.modes:
        cells = "  ".join(f"{k} {v:.4f}" for k, v in mode.metrics.items())
        print(f"  {mode.mode:15} {cells}  {mode.queries_per_second:.1f} q/s")
    reranked = result.modes[1].metrics
    print("  ratio to hybrid: " + "  ".join(f"{k} {reranked[k] / base[k]:.3f}" for k in base if base[k]))


def run_faq(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in args.questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    golds = [r.get("sources") or [r["source_page"]] for r in rows]
    excluded = sorted({g for gold in golds for g in gold}) if args.exclude else []
    workspace = args.keep or Path("/tmp/ragapp-bench-faq")
    with App(workspace, config={"ingest": {"exclude": excluded}}) as app:  # the pages benchmarks/answers.py asks
        app.ingest([args.docs], include=["**/*.html"], exclude=DJANGO_EXCLUDE, progress=True)
    runs = [("dense", False), ("bm25", False), ("hybrid", False)] + ([("hybrid", True)] if args.reranker else [])
    for mode, rerank in runs:
        config = {"retrieval": {"reranker": str(args.reranker.resolve())}} if rerank else {}
        with App(workspace, config=config) as app:
            scores = [_faq_scores(app, r["question"], gold, mode, rerank) for r, gold in zip(rows, golds, strict=True)]
        means = {k: statistics.fmean(s[k] for s in scores) for k in scores[0]}
        name = f"{mode}+rerank" if rerank else mode
        print(f"  {name:15} " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()) + f"  ({len(rows)} questions)")


def _faq_scores(app: App, question: str, gold: list[str], mode: str, rerank: bool) -> dict[str, float]:
    """hit@1, MRR@10 and nDCG@10 over documents (a page counts once, at its best passage)."""
    pages: list[bool] = []
    seen: set[str] = set()
    for hit in app.search(question, 30, mode=mode, rerank=rerank):  # type: ignore[arg-type]
        if hit.source not in seen:
            seen.add(hit.source)
            pages.append(any(source_matches(g.partition("#")[0], hit.source, None) for g in gold))
    top = pages[:10]
    first = next((n for n, relevant in enumerate(top) if relevant), None)
    dcg = sum(1 / math.log2(n + 2) for n, relevant in enumerate(top) if relevant)
    ideal = sum(1 / math.log2(n + 2) for n in range(min(len(gold), 10)))
    return {
        "hit@1": float(bool(pages[:1] and pages[0])),
        "mrr@10": 0.0 if first is None else 1 / (first + 1),
        "ndcg@10": dcg / ideal,
    }


def run_latency(args: argparse.Namespace) -> None:
    from ragapp.reranker import Reranker
    from ragapp.store import embedding_text

    rows = [json.loads(line) for line in args.questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    queries = [r.get("question") or r["query"] for r in rows][: args.queries]
    with App(args.workspace) as app:
        candidates = [
            [embedding_text(h.title, h.heading, h.text) for h in app.search(q, args.candidates, rerank=False)]
            for q in queries
        ]
    for dtype in ("float32", "auto"):
        reranker = Reranker(str(args.reranker.resolve()), dtype=dtype)
        reranker.score(queries[0], candidates[0])  # load and warm up
        seconds = []
        for query, texts in zip(queries, candidates, strict=True):
            started = time.perf_counter()
            reranker.score(query, texts)
            seconds.append(time.perf_counter() - started)
        seconds.sort()
        p99 = seconds[min(len(seconds) - 1, math.ceil(0.99 * len(seconds)) - 1)]
        print(
            f"  {dtype:8} ({reranker.dtype}): {args.candidates} candidates, "
            f"p50 {statistics.median(seconds) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(seconds)} queries"
        )


if __name__ == "__main__":
    main()
