"""Retrieval quality and speed on BEIR collections, hybrid against its baselines in the same run.

    .venv/bin/python benchmarks/beir_retrieval.py ../shared/data/beir/scifact ../shared/data/beir/cranfield

For each collection: ingest once (into --keep DIR/<name> if given, reused by later runs), then
search every judged query in each mode --repeat times. Quality is deterministic; speed is the median
queries/second over the repeats. Prints hybrid's ratio to BM25 (the named baseline) and to dense,
and, for SciFact, to the published nDCG@10 of BM25 (0.665) and of all-MiniLM-L6-v2 (0.64).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.bench import bench_retrieval  # noqa: E402

PUBLISHED = {"scifact": {"bm25": 0.665, "all-MiniLM-L6-v2": 0.64}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collections", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the ingested workspaces under this folder")
    args = parser.parse_args()

    for folder in args.collections:
        keep = args.keep / folder.resolve().name if args.keep else None
        runs = [
            bench_retrieval(folder, args.split, keep=keep, progress=sys.stderr.isatty()) for _ in range(args.repeat)
        ]
        first = runs[0]
        print(
            f"\n{first.dataset} ({first.split}): {first.queries} queries, {first.documents} documents, "
            f"{first.chunks} chunks; ingest {first.ingest_seconds:.1f} s ({first.chunks_embedded} embedded)"
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


if __name__ == "__main__":
    main()
