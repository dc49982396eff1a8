"""`ragapp reward train` and `ragapp reward score`: a model that scores answers, trained on preferences."""

from __future__ import annotations

from pathlib import Path

import click

from ragapp.cli.common import emit_json, json_option, losses, note, open_app

PROMPT_FIELDS = ("prompt", "question")
COMPLETION_FIELDS = ("completion", "prediction", "answer")


@click.group("reward")
def reward() -> None:
    """Train and use a reward model: it scores how good a completion is as an answer to a prompt.

    Scores only rank completions of the same prompt. Point reward.model at a trained folder and
    `ragapp eval run` adds a `reward` metric, `ragapp ask --best-of N` keeps the best-scored answer.
    """


@reward.command("train")
@click.argument("rankings", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder to save the model into."
)
@click.option("--base", help="Encoder folder to start from (default: the shipped all-MiniLM-L6-v2).")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True, help="Learning rate.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Pairs per step.")
@click.option(
    "--max-length", type=click.IntRange(8), default=256, show_default=True, help="Tokens of prompt + completion."
)
@click.option(
    "--validation",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of prompts held out to report loss and accuracy after each epoch.",
)
@click.option(
    "--test",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of prompts held out for the final pair accuracy.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Decides the split, the new head and the order.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@json_option
def train(
    rankings: Path,
    out: Path,
    base: str | None,
    epochs: int,
    lr: float,
    batch_size: int,
    max_length: int,
    validation: float,
    test: float,
    seed: int,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train a pairwise (Bradley–Terry) reward model on RANKINGS (JSONL).

    \b
    Each line is one prompt with ranked completions (every preferred-first pair is trained on; ties
    give no pair) or one comparison:
      {"prompt": "...", "completions": ["best", "second", "worst"]}
      {"prompt": "...", "completions": [{"text": "...", "rank": 1}, ...]}
      {"prompt": "...", "chosen": "...", "rejected": "..."}

    Prompts, not pairs, are split into train, validation and test, so the held-out accuracy is
    measured on prompts the model never saw. The splits are saved in OUT/data/.
    """
    from ragapp.reward_training import train_reward

    report = train_reward(
        rankings,
        out,
        base=base,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        validation=validation,
        test=test,
        seed=seed,
        progress=not as_json,
        overwrite=overwrite,
        on_note=note,
    )
    if as_json:
        emit_json(report.to_dict())
        return
    p, n = report.pairs, report.prompts
    click.echo(
        f"Trained a reward model on {p['train']} pairs from {n['train']} prompts "
        f"(validation {p['validation']}, test {p['test']} pairs): "
        f"{report.steps} steps, {report.seconds_per_step:.2f} s/step, {report.seconds:.0f} s in all"
    )
    click.echo(f"train loss per epoch: {losses(report.train_loss)} (ln 2 = 0.693 is chance)")
    if report.validation_loss:
        accuracy = " → ".join(f"{a:.2f}" for a in report.validation_accuracy)
        click.echo(f"validation loss per epoch: {losses(report.validation_loss)}; pair accuracy: {accuracy}")
    if report.test_accuracy_before is not None and report.test_accuracy_after is not None:
        click.echo(
            f"held-out pair accuracy: {report.test_accuracy_before:.3f} → {report.test_accuracy_after:.3f} "
            f"(untrained → trained; {p['test']} pairs of unseen prompts), loss {report.test_loss_after:.3f}"
        )
    click.echo(f"saved: {report.out}")
    click.echo(f'use it: reward.model = "{report.out}"')


def _shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@reward.command("score")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("source", metavar="INPUT")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@json_option
def score(model_dir: Path, source: str, batch_size: int, as_json: bool) -> None:
    """Score answers with the reward model in MODEL_DIR; higher is better.

    INPUT is a JSONL file whose lines have a `prompt` and a `completion` (or `question` and
    `prediction`/`answer`, as in eval files), or the name or id of an evaluation run in this workspace,
    whose answers are scored against their questions. Prints one score per line with the start of its
    prompt, or a JSON list.
    """
    from ragapp.reward import RewardModel

    lines, prompts, completions = _from_run(source) if not Path(source).exists() else _from_file(Path(source))
    scores = RewardModel.load(model_dir).score(prompts, completions, batch_size=batch_size)
    if as_json:
        emit_json([{"line": n, "prompt": p, "score": s} for n, p, s in zip(lines, prompts, scores, strict=True)])
        return
    for prompt, value in zip(prompts, scores, strict=True):
        click.echo(f"{value:.4f}\t{_shorten(prompt)}")


def _from_file(path: Path) -> tuple[list[int], list[str], list[str]]:
    from ragapp.training_data import read_records

    lines, prompts, completions = [], [], []
    for record in read_records(path):
        prompt_field = next((f for f in PROMPT_FIELDS if f in record.data), PROMPT_FIELDS[0])
        completion_field = next((f for f in COMPLETION_FIELDS if f in record.data), COMPLETION_FIELDS[0])
        prompts.append(str(record.text(prompt_field)))
        completions.append(str(record.text(completion_field)))
        lines.append(record.line)
    return lines, prompts, completions


def _from_run(ref: str) -> tuple[list[int], list[str], list[str]]:
    """The answered items of an evaluation run (position = the dataset line)."""
    from ragapp.errors import UsageError
    from ragapp.evals.runs import RunStore

    app = open_app()
    if not app.has_store():
        raise UsageError(f"{ref}: no such file, and no workspace at {app.workspace} to find a run of that name")
    run = RunStore(app.open_store()).load(ref)
    items = run.scored
    if not items:
        raise UsageError(f"evaluation run {run.name!r} has no answered questions to score")
    return [i.position for i in items], [i.question for i in items], [i.prediction for i in items]


COMMANDS = [reward]
