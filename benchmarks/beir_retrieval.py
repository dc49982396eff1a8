"""Retrieval quality and speed on BEIR collections, hybrid against its baselines in the same run.

    .venv/bin/python benchmarks/beir_retrieval.py ../shared/data/beir/scifact ../shared/data/beir/cranfield
    .venv/bin/python benchmarks/beir_retrieval.py --dtypes float32,bfloat16 ...   # embedding precision

For each collection: ingest once (into --keep DIR/<name> if given, reused by later runs), then
search every judged query in each mode --repeat times. Quality is deterministic; speed is the median
queries/second over the repeats. Prints hybrid's ratio to BM25 (the named baseline) and to dense,
and, for SciFact, to the published nDCG@10 of BM25 (0.665) and of all-MiniLM-L6-v2 (0.64).
With several --dtypes, each is ingested and searched in turn, and each one's nDCG@10 is printed as a
ratio to the first's (float32, the baseline).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragapp.evals.bench import bench_retrieval

PUBLISHED = {"scifact": {"bm25": 0.665, "all-MiniLM-L6-v2": 0.64}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collections", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the ingested workspaces under this folder")
    parser.add_argument("--dtypes", default="auto", help="embedding.dtype values to compare, comma-separated")
    args = parser.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]

    by_dtype: dict[str, dict[str, dict[str, float]]] = {}
    for folder in args.collections:
        for dtype in dtypes:
            keep = args.keep / f"{folder.resolve().name}-{dtype}" if args.keep else None
            ndcg = run_collection(folder, args.split, args.repeat, keep, dtype)
            by_dtype.setdefault(folder.resolve().name, {})[dtype] = ndcg
    if len(dtypes) > 1:
        print(f"\nnDCG@10 by embedding dtype (ratio to {dtypes[0]}):")
        for name, results in by_dtype.items():
            first = results[dtypes[0]]
            for dtype, ndcg in results.items():
                cells = ", ".join(f"{mode} {value:.4f} ({value / first[mode]:.4f})" for mode, value in ndcg.items())
                print(f"  {name:10} {dtype:9} {cells}")


def run_collection(folder: Path, split: str, repeat: int, keep: Path | None, dtype: str) -> dict[str, float]:
    config = {"embedding": {"dtype": dtype}}
    runs = [
        bench_retrieval(folder, split, keep=keep, config=config, progress=sys.stderr.isatty()) for _ in range(repeat)
    ]
    first = runs[0]
    print(
        f"\n{first.dataset} ({first.split}, embedding dtype {dtype}): {first.queries} queries, "
        f"{first.documents} documents, {first.chunks} chunks; ingest {first.ingest_seconds:.1f} s "
        f"({first.chunks_embedded} embedded)"
    )
    print(f"{'mode':8} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7} {'q/s (median)':>13}  q/s per run")
    ndcg = {}
    for i, mode in enumerate(first.modes):
        qps = [r.modes[i].queries_per_second for r in runs]
        m = mode.metrics
        ndcg[mode.mode] = m["ndcg@10"]
        print(
            f"{mode.mode:8} {m['ndcg@10']:8.4f} {m['recall@10']:7.4f} {m['recall@100']:7.4f} {m['mrr@10']:7.4f} "
            f"{statistics.median(qps):13.1f}  {', '.join(f'{q:.1f}' for q in qps)}"
        )
    print(f"hybrid / bm25 nDCG@10:  {ndcg['hybrid'] / ndcg['bm25']:.3f}")
    print(f"hybrid / dense nDCG@10: {ndcg['hybrid'] / ndcg['dense']:.3f}")
    for name, value in PUBLISHED.get(first.dataset, {}).items():
        print(f"hybrid / published {name} ({value}): {ndcg['hybrid'] / value:.3f}")
    return ndcg


if __name__ == "__main__":
    main()
