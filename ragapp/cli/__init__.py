"""The `ragapp` command. Each command group lives in its own module; all of them wrap `ragapp.App`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

import ragapp
from ragapp.cli import agent, bench, common, documents, evals, model, retriever, reward, serve, training, workspace
from ragapp.errors import RagappError


class _Group(click.Group):
    """Turns ragapp's own errors into a one-line message and their exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RagappError as exc:
            click.echo(f"Error: {exc}", err=True)  # as click shows its own usage errors
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workspace",
    "-w",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="RAGAPP_WORKSPACE",
    default=".ragapp",
    show_default=True,
    help="Workspace folder holding the database, index and ragapp.toml (env: RAGAPP_WORKSPACE).",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="Keep documents, chunks and runs in this database instead of the workspace's SQLite file, e.g. "
    "postgresql://user@host/dbname (same as RAGAPP_DATABASE_URL or database.url in ragapp.toml).",
)
@click.version_option(ragapp.__version__, prog_name="ragapp")
@click.pass_context
def cli(ctx: click.Context, workspace: Path, database_url: str | None) -> None:
    """Ask questions about your documents, offline, with numbered citations.

    \b
    Typical use:
      ragapp ingest ~/docs          # parse, chunk, embed and index a folder
      ragapp ask "How do I ...?"    # answer from the most relevant passages
      ragapp search "topic"         # just the passages
      ragapp agent "task" --trace   # a task done with tools: search, read-only SQL, a calculator
      ragapp eval run qa.jsonl      # score answers against references
      ragapp bench retrieval DIR    # nDCG/recall on a BEIR test collection
      ragapp serve                  # the HTTP API (OpenAI-compatible RAG chat) and a chat widget
      ragapp model serve            # the model behind an OpenAI-compatible API (vLLM)
      ragapp finetune data.jsonl    # adapt the model (LoRA, soft prompt, full); align, reward: see --help
    """
    # A config layer (origin "flag"), not the environment: the command hands it to everything it opens
    # (`open_app`, a server's collections, a benchmark's workspace); the process environment stays the user's.
    ctx.meta[common.ROOT_FLAGS] = {"database": {"url": database_url}} if database_url is not None else {}
    ctx.obj = workspace


for command in (
    *documents.COMMANDS,
    *agent.COMMANDS,
    *evals.COMMANDS,
    *bench.COMMANDS,
    *model.COMMANDS,
    *training.COMMANDS,
    *reward.COMMANDS,
    *retriever.COMMANDS,
    *serve.COMMANDS,
    *workspace.COMMANDS,
):
    cli.add_command(command)


def main() -> None:
    # The command is ragapp's own process: tokenizers must not start threads that a later fork (the
    # parser worker, `ragapp model serve`) would copy. A library import leaves the environment alone.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="ragapp")
