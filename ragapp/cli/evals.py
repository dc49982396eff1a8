"""`ragapp eval ...`: batch evaluation runs, stored in the workspace, compared, gated and reported."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragapp.cli.common import emit_json, generation_flags, generation_options, json_option, open_app, table
from ragapp.evals.formatting import format_change, format_metric
from ragapp.evals.results import RunResult, shown_question

if TYPE_CHECKING:
    from ragapp.evals.judge import Judge

_ANSWER_METRICS = ("rougeL", "rouge1", "rouge2", "bleu")
_ITEM_METRICS = (*_ANSWER_METRICS, "groundedness", "faithfulness")  # `eval show --items`, those a run has


def _gate_options(f: Any) -> Any:
    f = click.option(
        "--max-drop-vs",
        "max_drop_vs",
        nargs=2,
        metavar="RUN METRIC=DROP,...",
        help="Fail if a metric is worse than in RUN by more than DROP (absolute), e.g. `--max-drop-vs base rougeL=0.02`.",
    )(f)
    return click.option(
        "--fail-under",
        metavar="METRIC=MIN,...",
        help="Fail (exit 1) if a metric is below MIN, e.g. `rougeL=0.25,bleu=0.1`.",
    )(f)


def _judge_options(f: Any) -> Any:
    f = click.option(
        "--judge-model", metavar="NAME", help="The judge's model (default: the first one the server lists)."
    )(f)
    return click.option(
        "--judge-url",
        metavar="URL",
        help="Also score `faithfulness` with an LLM judge at this OpenAI-compatible endpoint, "
        "e.g. http://127.0.0.1:8000/v1 (API key: $OPENAI_API_KEY, if set).",
    )(f)


@contextmanager
def _judging(url: str | None, model: str | None) -> Iterator[Judge | None]:
    """The judge, connected (its model resolved) before any question is answered: a wrong URL costs no run."""
    from ragapp.errors import UsageError

    if url is None:
        if model is not None:
            raise UsageError("--judge-model needs --judge-url")
        yield None
        return
    from ragapp.evals.judge import Judge

    judge = Judge(url, model, api_key=os.environ.get("OPENAI_API_KEY") or None)
    try:
        yield judge
    finally:
        judge.close()


def _gate(fail_under: str | None, max_drop_vs: tuple[str, str] | None) -> Callable[[RunResult], None]:
    """Parse the gate options and load the baseline up front (a typo should not cost a whole run);
    the returned check runs after the results are printed, so CI logs show the numbers, then the verdict."""
    from ragapp.evals.gate import check_drops, check_floors, enforce, parse_thresholds

    floors = parse_thresholds(fail_under, "--fail-under") if fail_under else {}
    base = allowed = None
    if max_drop_vs:
        base_ref, spec = max_drop_vs
        allowed = parse_thresholds(spec, "--max-drop-vs")
        base = _runs().load(base_ref)

    def check(run: RunResult) -> None:
        failures = check_floors(run.aggregates, floors)
        if base is not None and allowed is not None:
            failures += check_drops(run.aggregates, base.aggregates, allowed, base.name)
        enforce(failures)
        if floors or allowed:
            click.echo("Quality gate passed.")

    return check


def print_run(run: RunResult) -> None:
    scored, errors = len(run.scored), len(run.items) - len(run.scored)
    click.echo(
        f"Run {run.name} (#{run.id}, {run.kind}): {run.status}, {run.saved}/{run.total} answered, {run.seconds:.1f} s"
    )
    click.echo(f"Dataset: {run.dataset}")
    if run.models:
        click.echo("Models: " + ", ".join(f"{k} {v}" for k, v in run.models.items()))
    click.echo(
        f"Scored {scored}"
        + (f", {errors} failed" if errors else "")
        + (f", {len(run.problems)} bad lines skipped" if run.problems else "")
    )
    rows = [[name, format_metric(name, value)] for name, value in run.aggregates.items()]
    if rows:
        click.echo(table(rows, ["metric", "value"]))
    for problem in run.problems[:20]:
        click.echo(f"  line {problem.line}: {problem.reason}", err=True)
    if len(run.problems) > 20:
        click.echo(f"  ... and {len(run.problems) - 20} more bad lines", err=True)
    for item in [i for i in run.items if i.error][:20]:
        click.echo(f"  item {item.item_id} (line {item.position}) failed: {item.error}", err=True)
    judge_failed = [i for i in run.items if i.judge and i.judge.get("error")]
    for item in judge_failed[:20]:
        error = item.judge["error"] if item.judge else ""
        click.echo(f"  item {item.item_id} (line {item.position}) has no faithfulness: {error}", err=True)
    if len(judge_failed) > 20:
        click.echo(f"  ... and {len(judge_failed) - 20} more items the judge failed on", err=True)


@click.group(name="eval")
def eval_group() -> None:
    """Score answers against references: run a dataset, compare runs, gate CI, write reports.

    \b
    A dataset is JSON Lines: {"question": ..., "answer": ..., "sources": [...], "id": ...}
      ragapp eval run questions.jsonl --name baseline
      ragapp eval run questions.jsonl --name tuned --max-drop-vs baseline rougeL=0.02
      ragapp eval compare baseline tuned
      ragapp eval report tuned --out report.html
    """


@eval_group.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--name", help="Name of the run (default: DATASET's name and a number). An unfinished run is continued.")
@click.option("-k", type=click.IntRange(1, 100), help="Passages to retrieve per question (default: retrieval.k).")
@click.option(
    "--batch-size", type=click.IntRange(1, 256), default=16, show_default=True, help="Questions per generation call."
)
@click.option("--no-stem", is_flag=True, help="ROUGE without the Porter stemmer.")
@click.option(
    "--rerank/--no-rerank",
    default=None,
    help="Rerank the candidates (retrieval.reranker) or not; the run records which. Default: on when one is set.",
)
@generation_options
@_judge_options
@_gate_options
@json_option
def run(
    dataset: Path,
    name: str | None,
    k: int | None,
    batch_size: int,
    no_stem: bool,
    rerank: bool | None,
    judge_url: str | None,
    judge_model: str | None,
    fail_under: str | None,
    max_drop_vs: tuple[str, str] | None,
    as_json: bool,
    **sampling: Any,
) -> None:
    """Answer every question in DATASET as `ask` would, score the answers, their grounding and retrieval, store the run.

    Interrupted runs (Ctrl-C, a crash) continue where they stopped when the same command is run again.
    """
    from ragapp.evals.runner import evaluate

    gate = _gate(fail_under, max_drop_vs)
    with _judging(judge_url, judge_model) as judge:
        app = open_app(
            {"generation": generation_flags(sampling)} | ({"retrieval": {"reranker": ""}} if rerank is False else {})
        )
        if rerank and not app.config.retrieval.reranker:
            from ragapp.errors import UsageError
            from ragapp.search import NO_RERANKER

            raise UsageError(NO_RERANKER)
        result = evaluate(
            app,
            dataset,
            name=name,
            k=k,
            batch_size=batch_size,
            stem=not no_stem,
            progress=sys.stderr.isatty(),
            judge=judge,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        print_run(result)
    gate(result)


@eval_group.command()
@click.argument("predictions", type=click.Path(path_type=Path))
@click.option("--name", help="Name of the stored run (default: the file's name and a number).")
@click.option("--no-stem", is_flag=True, help="ROUGE without the Porter stemmer.")
@_judge_options
@_gate_options
@json_option
def score(
    predictions: Path,
    name: str | None,
    no_stem: bool,
    judge_url: str | None,
    judge_model: str | None,
    fail_under: str | None,
    max_drop_vs: tuple[str, str] | None,
    as_json: bool,
) -> None:
    """Score answers produced elsewhere: JSONL with `prediction` and `reference` (or `answer`) per line.

    `question`, `id` and `sources` are optional; a configured reward model scores only rows with a question.
    When the workspace has documents, rows with a question are attributed to the passages retrieved for it
    and get the groundedness metrics."""
    from ragapp.evals.runner import score_predictions

    gate = _gate(fail_under, max_drop_vs)
    with _judging(judge_url, judge_model) as judge:
        result = score_predictions(
            open_app(), predictions, name=name, stem=not no_stem, progress=sys.stderr.isatty(), judge=judge
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        print_run(result)
    gate(result)


def _runs() -> Any:
    from ragapp.errors import UsageError
    from ragapp.evals.runs import RunStore

    app = open_app()
    if not app.has_store():
        raise UsageError(f"no workspace at {app.workspace}, so no evaluation runs (see `ragapp eval run --help`)")
    return RunStore(app.open_store())


@eval_group.command(name="list")
@json_option
def list_runs(as_json: bool) -> None:
    """Stored runs, newest first, with their main metrics."""
    runs = _runs().list()
    if as_json:
        emit_json([{k: v for k, v in r.to_dict().items() if k != "items"} for r in runs])
        return
    if not runs:
        click.echo("No evaluation runs yet: `ragapp eval run DATASET` makes one.")
        return
    hit_names = sorted({n for r in runs for n in r.aggregates if n.startswith("hit@")})
    grounded = ["groundedness"] if any("groundedness" in r.aggregates for r in runs) else []
    metrics = [*_ANSWER_METRICS, *grounded, *hit_names]
    rows = [
        [
            str(r.id),
            r.name,
            r.status,
            f"{r.saved}/{r.total}",
            r.started_at.strftime("%Y-%m-%d %H:%M"),
            f"{r.seconds:.0f} s",
        ]
        + [format_metric(m, r.aggregates.get(m)) for m in metrics]
        for r in runs
    ]
    click.echo(table(rows, ["id", "name", "status", "items", "started", "time", *metrics]))


@eval_group.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--items", "show_items", is_flag=True, help="Also list every item with its scores.")
@_gate_options
@json_option
def show(
    run_ref: str, show_items: bool, fail_under: str | None, max_drop_vs: tuple[str, str] | None, as_json: bool
) -> None:
    """A stored run's aggregates (RUN is a name or id); the gate options check it like `eval run` does."""
    gate = _gate(fail_under, max_drop_vs)
    result = _runs().load(run_ref)
    if as_json:
        emit_json(result.to_dict() if show_items else {k: v for k, v in result.to_dict().items() if k != "items"})
    else:
        print_run(result)
        if show_items:
            names = [m for m in _ITEM_METRICS if any(m in i.metrics for i in result.items)]
            rows = [
                [
                    str(i.position),
                    i.item_id[:20],
                    *(format_metric(m, i.metrics.get(m)) for m in names),
                    shown_question(i.question)[:60],
                ]
                for i in result.items
            ]
            click.echo(table(rows, ["line", "id", *names, "question"]))
    gate(result)


@eval_group.command(name="compare")
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@click.option("--by", default="rougeL", show_default=True, help="Metric to rank the most-changed questions by.")
@click.option("--top", type=click.IntRange(0), default=5, show_default=True, help="How many changed questions to show.")
@json_option
def compare_runs(run_a: str, run_b: str, by: str, top: int, as_json: bool) -> None:
    """Per-metric change from RUN_A to RUN_B with 95% paired bootstrap intervals, and the questions that changed most."""
    from ragapp.evals.comparison import compare

    runs = _runs()
    c = compare(runs.load(run_a), runs.load(run_b), by=by, top=top)
    if as_json:
        emit_json(
            {
                "a": c.a.name,
                "b": c.b.name,
                "paired": c.paired,
                "only_a": c.only_a,
                "only_b": c.only_b,
                "confidence": c.confidence,
                "metrics": [{**vars(m), "delta": m.delta, "verdict": m.verdict} for m in c.metrics],
                "changed": [{**vars(ch), "delta": ch.delta} for ch in c.changed],
            }
        )
        return
    click.echo(
        f"{c.a.name} -> {c.b.name}: {c.paired} questions in both"
        + (f" ({c.only_a} only in A, {c.only_b} only in B)" if c.only_a or c.only_b else "")
    )
    if not c.paired:
        return
    pct = f"{c.confidence:.0%}"
    rows = [
        [
            m.name,
            format_metric(m.name, m.a),
            format_metric(m.name, m.b),
            format_change(m.name, m.delta),
            f"[{format_change(m.name, m.low)}, {format_change(m.name, m.high)}]",
            m.verdict,
            str(m.n),
        ]
        for m in c.metrics
    ]
    click.echo(table(rows, ["metric", "A", "B", "delta", f"{pct} CI", "verdict", "n"]))
    if c.changed:
        click.echo(f"\nMost changed by {c.by}:")
        for ch in c.changed:
            change = f"{format_change(c.by, ch.delta)}  {format_metric(c.by, ch.a)} -> {format_metric(c.by, ch.b)}"
            click.echo(f"  {change}  [{ch.item_id}] {shown_question(ch.question)[:80]}")
            click.echo(f"      A: {' '.join(ch.prediction_a.split())[:100]}")
            click.echo(f"      B: {' '.join(ch.prediction_b.split())[:100]}")


@eval_group.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="HTML file to write.")
@click.option(
    "--worst", type=click.IntRange(0), default=10, show_default=True, help="How many of the worst answers to show."
)
def report(run_ref: str, out: Path, worst: int) -> None:
    """Write a self-contained HTML report of RUN: metrics, distributions, the worst answers with their sources."""
    from ragapp.evals.report import write_report

    path = write_report(_runs().load(run_ref), out, worst=worst)
    click.echo(f"Wrote {path}")


@eval_group.command()
@click.argument("run_ref", metavar="RUN")
def delete(run_ref: str) -> None:
    """Delete a stored run and its items."""
    click.echo(f"Deleted run {_runs().delete(run_ref)}")


COMMANDS = (eval_group,)
