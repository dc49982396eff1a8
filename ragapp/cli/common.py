"""Small pieces shared by the command modules."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ragapp.answer import Citation
from ragapp.app import App
from ragapp.config import merge_layers
from ragapp.generators import BACKENDS
from ragapp.search import MODES

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")


ROOT_FLAGS = "ragapp.root_flags"  # click's ctx.meta key: the settings given as flags of `ragapp` itself


def root_flags() -> dict[str, dict[str, Any]]:
    """The settings given before the command (`ragapp --database-url URL ...`), as a config layer."""
    flags: dict[str, dict[str, Any]] = click.get_current_context().meta.get(ROOT_FLAGS, {})
    return flags


def open_app(config: dict[str, dict[str, Any]] | None = None) -> App:
    """The workspace's App under the root flags and `config` (the command's own flags, which win)."""
    workspace: Path = click.get_current_context().find_root().obj
    return App(workspace, config=merge_layers(root_flags(), config or {}))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def note(message: str) -> None:
    """A remark on stderr that does not stop the command (a skipped line, say)."""
    click.echo(f"Note: {message}", err=True)


def losses(values: list[float]) -> str:
    return " → ".join(f"{v:.3f}" for v in values)


def shown_path(source: str) -> str:
    """Paths under the current folder are shown relative to it; others (and URLs) as stored."""
    if not os.path.isabs(source):
        return source
    try:
        rel = os.path.relpath(source)
    except ValueError:
        return source
    return source if rel.startswith("..") else rel


def echo_citations(citations: list[Citation], title: str = "Sources:") -> None:
    """The numbered sources after an answer; * marks those the answer cites."""
    click.echo(title)
    for c in citations:
        where = shown_path(c.source) + (f"#{c.anchor}" if c.anchor else "")
        where += f" (page {c.page})" if c.page is not None else ""
        marker = "*" if c.cited else " "
        click.echo(f" {marker}[{c.n}] {where}" + (f" — {c.heading}" if c.heading else ""))


_GENERATION_OPTIONS = (
    click.option("--max-new-tokens", type=click.IntRange(1), help="Longest answer, in tokens."),
    click.option("--temperature", type=click.FloatRange(0), help="0 = greedy (default); higher samples more freely."),
    click.option("--top-k", type=click.IntRange(0), help="Sample from the K likeliest tokens (0 = all)."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling mass."),
    click.option("--seed", type=int, help="Seed for sampling; same seed, same answer."),
    click.option("--stop", multiple=True, metavar="TEXT", help="End the answer at TEXT (repeatable)."),
    click.option(
        "--repetition-penalty",
        type=click.FloatRange(0, 2, min_open=True),
        help="Above 1 makes tokens already in the prompt or answer less likely (1 = off).",
    ),
    click.option(
        "--no-repeat-ngram-size",
        type=click.IntRange(0, 64),
        metavar="N",
        help="Never repeat a run of N answer tokens (0 = off; transformers backend only).",
    ),
    click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        help="transformers (in-process, default), vllm (in-process vLLM) or openai (a server, see --base-url).",
    ),
    click.option("--model", help="A .gguf file or model folder; with --backend openai, the served model's name."),
    click.option("--base-url", metavar="URL", help="The OpenAI-compatible server for --backend openai."),
)
GENERATION_KEYS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "stop",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "backend",
    "model",
    "base_url",
)


def generation_options(f: F) -> F:
    """The sampling flags shared by every command that generates; read them back with `generation_flags`."""
    for option in reversed(_GENERATION_OPTIONS):
        f = option(f)
    return f


def generation_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the sampling flags out of a command's kwargs; unset ones are None (config decides)."""
    flags = {key: kwargs.pop(key) for key in GENERATION_KEYS}
    flags["stop"] = list(flags["stop"]) or None
    return flags


def retrieval_options(f: F) -> F:
    """`--mode`, `--filter` and `--rerank/--no-rerank`, shared by the commands that retrieve passages."""
    f = click.option(
        "--rerank/--no-rerank",
        default=None,
        help="Reorder the candidates with the reranker (retrieval.reranker). Default: on when one is set.",
    )(f)
    f = click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="KEY=VALUE",
        help="Only passages from matching documents (repeatable; same key = any of, keys = all of). KEY is "
        "source (a glob: '*.pdf', 'docs/**'), kind (a type or suffix: markdown, md, pdf...), document (an id) "
        "or meta.NAME.",
    )(f)
    return click.option(
        "--mode",
        type=click.Choice(MODES),
        help="dense (embeddings), bm25 (keywords) or hybrid (both, fused). Default: retrieval.mode.",
    )(f)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Plain aligned columns; numbers (anything starting with a digit, sign or dot) are right-aligned."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        out = []
        for cell, width in zip(row, widths, strict=True):
            numeric = cell[:1].isdigit() or cell[:1] in "+-−." and cell[1:2].isdigit()
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])
