"""`ragapp reranker train` and `ragapp embedder train`: the retriever's models, trained on your documents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ragapp.cli.common import emit_json, json_option, note, open_app
from ragapp.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


def training_sources(f: F) -> F:
    """Where the questions come from, and how the model trains on them; shared by both commands."""
    options = [
        click.option("--beir", "beir", type=click.Path(path_type=Path), help="A BEIR folder: train on its qrels."),
        click.option("--split", default="train", show_default=True, help="The BEIR split to train on."),
        click.option(
            "--pairs",
            type=click.Path(path_type=Path),
            help="JSONL of {query, positive, negatives?} or {question, sources} (like an eval dataset).",
        ),
        click.option(
            "--synthetic",
            type=click.IntRange(1),
            metavar="N",
            help="Write questions for N chunks of the workspace with the generator (no labels needed).",
        ),
        click.option(
            "--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder to save into."
        ),
        click.option("--base", help="Encoder folder to start from (default: the shipped all-MiniLM-L6-v2)."),
        click.option("--epochs", type=click.IntRange(1), default=1, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), help="Learning rate (default: per model)."),
        click.option("--batch-size", type=click.IntRange(2), default=16, show_default=True, help="Questions per step."),
        click.option(
            "--negatives", type=click.IntRange(1, 16), default=4, show_default=True, help="Hard negatives per question."
        ),
        click.option(
            "--max-length", type=click.IntRange(16, 512), default=256, show_default=True, help="Tokens per pair."
        ),
        click.option(
            "--validation",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.1,
            show_default=True,
            help="Share of questions held out to measure the model (and choose a reranker's blend).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Decides the split, samples and order."),
        click.option("--overwrite", is_flag=True, help="Replace a non-empty --out."),
        json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _examples(options: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The examples and a record of their sources; the options that choose them are taken out of `options`,
    what is left goes to the trainer."""
    from ragapp.retriever_data import beir_wanted, check_enough, mine, read_examples, synthetic_wanted

    beir, split, pairs = options.pop("beir"), options.pop("split"), options.pop("pairs")
    synthetic, negatives, seed = options.pop("synthetic"), options.pop("negatives"), options["seed"]

    if not (beir or pairs or synthetic):
        raise UsageError("say where the questions come from: --beir DIR, --pairs FILE or --synthetic N")
    app = open_app()
    wanted = []
    sources: dict[str, Any] = {}
    if pairs:
        read = read_examples(pairs)
        sources["pairs"] = {"file": str(pairs), "questions": len(read)}
        wanted += read
    if beir:
        judged = beir_wanted(app, beir, split, progress=True)
        sources["beir"] = {"folder": str(beir), "split": split, "questions": len(judged)}
        wanted += judged
    if synthetic:
        written, stats = synthetic_wanted(app, synthetic, seed=seed, progress=True)
        sources["synthetic"] = {**stats, "kept": len(written), "generator": app.generator.model_id}
        wanted += written
    examples, stats = mine(app, wanted, negatives=negatives, seed=seed, progress=True)
    sources["mining"] = stats
    if stats["answer_not_found"]:
        note(f"{stats['answer_not_found']} question(s) skipped: their answering document is not in the workspace")
    check_enough(examples, stats)
    return examples, sources


def _print(report: Any, as_json: bool, use: str) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    e = report.examples
    click.echo(f"Trained on {e['train']} questions ({e['validation']} held out) in {report.seconds:.0f} s")
    click.echo(f"  {report.steps} steps, {report.seconds_per_step:.2f} s/step; model {report.model_mb:.0f} MB")
    v = report.validation
    for key, label in (
        ("first_stage_mrr@10", "first stage"),
        ("reranker_alone_mrr@10", "reranker alone"),
        ("reranked_mrr@10", f"reranked (blend {v.get('blend', 1.0)})"),
        ("base_mrr@10", "base model"),
        ("trained_mrr@10", "trained"),
    ):
        if key in v:
            click.echo(f"  held-out MRR@10, {label}: {v[key]:.4f}")
    click.echo(f"Saved to {report.out}; use it with {use}")


@click.group("reranker")
def reranker() -> None:
    """Train a cross-encoder that reorders the retrieved candidates (retrieval.reranker)."""


@reranker.command("train")
@training_sources
def train_reranker_command(lr: float | None, as_json: bool, **options: Any) -> None:
    """Train a reranker from labelled questions or from questions written about the workspace's chunks.

    \b
    Examples:
      ragapp -w ~/bench/scifact reranker train --beir ~/beir/scifact --out ~/models/reranker
      ragapp reranker train --pairs qa.jsonl --out reranker      # {question, sources} lines
      ragapp reranker train --synthetic 2000 --out reranker      # no labels: doc2query
      export RAGAPP_RETRIEVAL_RERANKER="$PWD/reranker"     # or retrieval.reranker in ragapp.toml

    Hard negatives come from the workspace's own hybrid search; questions whose answer the workspace does
    not hold are skipped. The reranker learns to correct the first stage's order; the held-out questions
    show MRR@10 before and after, and choose how much weight its correction gets (saved with the model).
    """
    from ragapp.retriever_training import train_reranker

    examples, sources = _examples(options)
    report = train_reranker(examples, learning_rate=lr or 5e-5, progress=True, sources=sources, **options)
    _print(report, as_json, f'retrieval.reranker = "{report.out}" in ragapp.toml')


@click.group("embedder")
def embedder() -> None:
    """Fine-tune the embedding model on your documents' questions (embedding.model)."""


@embedder.command("train")
@training_sources
def train_embedder_command(lr: float | None, as_json: bool, **options: Any) -> None:
    """Fine-tune the bi-encoder (in-batch and hard negatives) from the same sources as `reranker train`.

    \b
    Setting embedding.model to the new folder re-embeds the whole workspace on the next ingest or
    search, as any model change does; `ragapp bench retrieval` measures what it gained.
    """
    from ragapp.retriever_training import train_embedder

    examples, sources = _examples(options)
    report = train_embedder(examples, learning_rate=lr or 2e-5, progress=True, sources=sources, **options)
    _print(report, as_json, f'embedding.model = "{report.out}" in ragapp.toml')


COMMANDS = (reranker, embedder)
