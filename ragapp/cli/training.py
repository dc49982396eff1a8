"""`ragapp finetune` and `ragapp align`: adapt the generator model; the backends load what they save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ragapp.cli.common import emit_json, json_option, losses, note, open_app

_SHARED = (
    click.option("--base", help="Model to start from: a .gguf file or model folder (default: the shipped SmolLM2)."),
    click.option(
        "--out",
        type=click.Path(path_type=Path, file_okay=False),
        help="Folder to save into (default: WORKSPACE/models/DATA-METHOD).",
    ),
    click.option("--epochs", type=click.IntRange(1), default=3, show_default=True),
    click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), help="Default: per method."),
    click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True),
    click.option("--rank", type=click.IntRange(1, 512), default=8, show_default=True, help="LoRA rank."),
    click.option(
        "--validation",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.1,
        show_default=True,
        help="Share of examples held out to report loss after each epoch.",
    ),
    click.option(
        "--test",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.1,
        show_default=True,
        help="Share held out for the final report (and for `ragapp eval run OUT/data/test.jsonl`).",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Decides the split and the training order."),
    click.option("--merge", is_flag=True, help="LoRA: also save base+adapter as a full model in OUT/merged."),
    click.option("--overwrite", is_flag=True, help="Replace a non-empty --out."),
    json_option,
)


def _shared(f: Any) -> Any:
    for option in reversed(_SHARED):
        f = option(f)
    return f


def _default_out(data: Path, method: str) -> Path:
    workspace: Path = click.get_current_context().find_root().obj
    return workspace / "models" / f"{data.stem}-{method}"


def _use_hint(out: str, method: str) -> str:
    if method == "full":
        return f'use it: generation.model = "{out}"'
    hint = f'use it: generation.adapter = "{out}"'
    return hint + (f"  or  ragapp model serve --lora {Path(out).name}={out}" if method == "lora" else "")


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["lora", "prompt-tuning", "full"]),
    default="lora",
    show_default=True,
    help="lora: low-rank adapters on the attention projections; prompt-tuning: 16 trained soft-prompt tokens "
    "(transformers backend only); full: every weight.",
)
@click.option(
    "--templates",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML with [tasks.NAME] prompt/completion templates filled from each line's fields (`task` picks one).",
)
@click.option(
    "--max-length", type=click.IntRange(16), default=2048, show_default=True, help="Longer examples are skipped."
)
@_shared
def finetune(data: Path, method: str, templates: Path | None, max_length: int, out: Path | None, **kw: Any) -> None:
    """Fine-tune the generator on DATA (JSONL); the loss covers the completions only.

    \b
    Each line is one example, in any of these shapes:
      {"prompt": "...", "completion": "..."}            (optional "system")
      {"messages": [{"role": "user", ...}, ..., {"role": "assistant", ...}]}
      {"instruction": "...", "input": "...", "output": "..."}
      {"question": "...", "answer": "..."}              prompted with this workspace's passages, like `ask`
      any fields, with --templates (a "task" field picks the template of a multi-task mix)

    Examples are split into train, validation and test by a hash of their content (stable across runs
    and line order); the splits are saved in OUT/data/. OUT is a LoRA adapter (use it with
    `generation.adapter`, `--lora NAME=OUT` of `ragapp model serve`), a soft prompt, or a full model folder.
    """
    from ragapp.finetune import finetune as run

    as_json = kw.pop("as_json")
    out = out or _default_out(data, method)
    app = open_app()
    report = run(
        data,
        out,
        method=method,
        app=app,
        templates=templates,
        max_length=max_length,
        progress=not as_json,
        on_note=note,
        **kw,
    )
    if as_json:
        emit_json(report.to_dict())
        return
    e = report.examples
    kind = {"lora": f"LoRA (r={kw['rank']})", "prompt-tuning": "a 16-token soft prompt", "full": "all weights"}[method]
    click.echo(
        f"Trained {kind} on {e['train']} examples (validation {e['validation']}, test {e['test']}): "
        f"{report.steps} steps, {report.seconds_per_step:.2f} s/step, {report.seconds:.0f} s in all"
    )
    click.echo(
        f"trainable parameters: {report.trainable_params:,} of {report.total_params:,} "
        f"({100 * report.trainable_share:.3g} %)"
    )
    if len(report.tasks) > 1:
        click.echo("tasks: " + ", ".join(f"{name} {n}" for name, n in sorted(report.tasks.items())))
    click.echo(f"train loss per epoch: {losses(report.train_loss)}")
    if report.validation_loss:
        click.echo(f"validation loss: {losses(report.validation_loss)} (before training, then after each epoch)")
    if report.test_loss_before is not None and report.test_loss_after is not None:
        click.echo(f"test loss: {report.test_loss_before:.3f} → {report.test_loss_after:.3f}")
    click.echo(f"saved: {report.out}")
    click.echo(_use_hint(report.out, method))
    if report.merged:
        click.echo(f"merged model: {report.merged}")


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--method", type=click.Choice(["dpo"]), default="dpo", show_default=True, help="Direct preference optimisation."
)
@click.option(
    "--beta",
    type=click.FloatRange(0, min_open=True),
    default=0.1,
    show_default=True,
    help="Strength of the KL penalty towards the base model: lower lets the model drift further.",
)
@_shared
def align(data: Path, method: str, beta: float, out: Path | None, learning_rate: float | None, **kw: Any) -> None:
    """Align the generator with preferences in DATA (JSONL); saves a LoRA adapter.

    \b
    Each line is one prompt with a preferred and a rejected completion, or several ranked ones
    (turned into every preferred-first pair; ties give no pair):
      {"prompt": "...", "chosen": "...", "rejected": "..."}
      {"prompt": "...", "completions": ["best", "second", "worst"]}
      {"prompt": "...", "completions": [{"text": "...", "rank": 1}, ...]}

    The reference model is --base with the adapter off; to align a fine-tuned model, save it merged
    (`ragapp finetune --merge`) and pass OUT/merged as --base.
    """
    from ragapp.align import align as run

    as_json = kw.pop("as_json")
    out = out or _default_out(data, method)
    report = run(
        data,
        out,
        method=method,
        beta=beta,
        learning_rate=learning_rate or 5e-5,
        progress=not as_json,
        on_note=note,
        **kw,
    )
    if as_json:
        emit_json(report.to_dict())
        return
    p = report.pairs
    click.echo(
        f"Aligned with DPO (β={beta}) on {p['train']} pairs (validation {p['validation']}, test {p['test']}): "
        f"{report.steps} steps, {report.seconds_per_step:.2f} s/step, {report.seconds:.0f} s in all"
    )
    click.echo(f"train loss per epoch: {losses(report.train_loss)} (ln 2 = 0.693 before training)")
    if report.validation_loss:
        click.echo(f"validation loss per epoch: {losses(report.validation_loss)}")
    if report.test:
        t = report.test
        click.echo(
            f"held-out pairs: loss {t['loss']:.3f}, reward accuracy {t['reward_accuracy']:.3f}, "
            f"margin {t['reward_margin']:.3f}"
        )
    click.echo(f"saved: {report.out}")
    click.echo(_use_hint(report.out, "lora"))
    if report.merged:
        click.echo(f"merged model: {report.merged}")


COMMANDS = [finetune, align]
