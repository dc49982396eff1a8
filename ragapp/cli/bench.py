"""`ragapp bench ...`: measure ragapp on public test collections."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ragapp.cli.common import emit_json, json_option, root_flags, table
from ragapp.config import merge_layers
from ragapp.search import MODES

_COLUMNS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


@click.group("bench")
def bench_group() -> None:
    """Benchmarks on public test collections (the data is yours to supply)."""


@bench_group.command("retrieval")
@click.argument("beir_dir", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Which qrels/SPLIT.tsv judgements to score.")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(MODES),
    help="Search mode to measure (repeatable; default: all three).",
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Ingest into DIR and keep it; later runs reuse it and embed only what changed.",
)
@click.option(
    "--rerank",
    "reranker",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also measure each mode reranked by this cross-encoder folder (rows MODE+rerank).",
)
@click.option("--runs", type=click.Path(path_type=Path, file_okay=False), help="Write DIR/<mode>.trec run files.")
@click.option("--fail-under", metavar="METRIC=MIN,...", help="Exit 1 if any mode scores below MIN, e.g. ndcg@10=0.3.")
@json_option
def retrieval(
    beir_dir: Path,
    split: str,
    modes: tuple[str, ...],
    keep: Path | None,
    reranker: Path | None,
    runs: Path | None,
    fail_under: str | None,
    as_json: bool,
) -> None:
    """Measure retrieval on a BEIR collection: nDCG@10, recall@10, recall@100, MRR@10, queries/second.

    BEIR_DIR holds corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv (the layout of the BEIR
    benchmark). The corpus is ingested into a temporary workspace with the current configuration
    (environment variables such as RAGAPP_CHUNKING_CHUNK_TOKENS apply; with --keep, so does
    DIR/ragapp.toml), then every judged query is searched in each mode. A document's score is that
    of its best passage. Metrics follow trec_eval; --runs writes the run files to check them with it.

    \b
    Examples:
      ragapp bench retrieval ~/beir/scifact
      ragapp bench retrieval ~/beir/scifact --split train --mode hybrid --keep ~/bench/scifact
      ragapp bench retrieval ~/beir/cranfield --fail-under ndcg@10=0.3   # a CI smoke benchmark
      ragapp bench retrieval ~/beir/scifact --mode hybrid --rerank ~/models/reranker
    """
    from ragapp.errors import UsageError
    from ragapp.evals.bench import bench_retrieval
    from ragapp.evals.gate import enforce, parse_thresholds

    floors = parse_thresholds(fail_under, "--fail-under") if fail_under else {}
    unknown = sorted(set(floors) - set(_COLUMNS))
    if unknown:
        raise UsageError(f"--fail-under: unknown metric {unknown[0]!r} (use {', '.join(_COLUMNS)})")
    result = bench_retrieval(
        beir_dir,
        split,
        modes or MODES,
        keep=keep,
        config=merge_layers(root_flags(), {"retrieval": {"reranker": str(reranker.resolve())}} if reranker else {}),
        reranked=reranker is not None,
        runs_dir=runs,
        metrics=_COLUMNS,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"{result.dataset} ({result.split}): {result.documents} documents, {result.chunks} chunks "
            f"({result.chunks_embedded} embedded in {result.ingest_seconds:.1f} s), {result.queries} queries"
        )
        rows = [
            [m.mode, *(f"{m.metrics[c]:.4f}" for c in _COLUMNS), f"{m.queries_per_second:.1f}"] for m in result.modes
        ]
        click.echo(table(rows, ["mode", *_COLUMNS, "queries/s"]))
        for problem in result.problems[:10]:
            click.echo(f"  skipped: {problem}", err=True)
        if len(result.problems) > 10:
            click.echo(f"  ... and {len(result.problems) - 10} more", err=True)
    failures = [
        f"{m.mode} {name} = {m.metrics[name]:.4f} is below the required {floor:g}"
        for m in result.modes
        for name, floor in floors.items()
        if m.metrics[name] < floor
    ]
    enforce(failures)


COMMANDS = (bench_group,)
