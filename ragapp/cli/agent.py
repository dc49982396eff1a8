"""`ragapp agent`: a task done step by step with tools (document search, read-only SQL, a calculator)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from ragapp.cli.common import echo_citations, emit_json, generation_flags, generation_options, json_option, open_app
from ragapp.tools import AGENT_TOOLS

if TYPE_CHECKING:
    from ragapp.agent import Step  # imports langchain's agent stack: only when a task runs


def _shorten(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + f" … ({len(text)} characters)"


def echo_step(step: Step) -> None:
    """One trace line (or block), on stderr so that stdout stays the answer."""
    if step.kind == "tool_call":
        if step.content:
            click.echo(f"· thought: {_shorten(step.content)}", err=True)
        args = next(iter(step.args.values())) if len(step.args) == 1 else json.dumps(step.args, ensure_ascii=False)
        click.echo(f"→ {step.tool}: {args}", err=True)
    elif step.kind == "observation":
        mark = "✗" if step.error else "←"
        body = _shorten(step.content).replace("\n", "\n    ")
        click.echo(f"{mark} {step.tool}: {body}", err=True)


@click.command()
@click.argument("task")
@click.option("--trace", is_flag=True, help="Show every step as it happens: each tool call and what the tool returned.")
@click.option(
    "--tool",
    "tools",
    multiple=True,
    type=click.Choice(AGENT_TOOLS),
    help="Only this tool (repeatable). Default: search_documents if anything is ingested, sql_query if a "
    "database is set, and calculator.",
)
@click.option(
    "--max-steps", type=click.IntRange(1, 50), help="Most model calls for the task (default: agent.max_steps)."
)
@click.option(
    "--database", metavar="URL", help="SQLAlchemy URL that sql_query reads, read-only (default: agent.database)."
)
@generation_options
@json_option
def agent(
    task: str,
    trace: bool,
    tools: tuple[str, ...],
    max_steps: int | None,
    database: str | None,
    as_json: bool,
    **sampling: Any,
) -> None:
    """Do TASK step by step: the model calls tools and answers from what they return.

    \b
    Tools:
      search_documents  the workspace's retriever; passages are cited as [1], [2], ...
      sql_query         one SELECT at a time on a read-only connection to --database (agent.database),
                        only the tables in agent.tables, at most agent.max_rows rows
      calculator        exact arithmetic (no Python is evaluated)

    \b
    Examples:
      ragapp agent "What is 1234 * 5678?" --trace
      ragapp agent "Which customer placed the most orders?" --database sqlite:///shop.db --trace

    Models that call tools natively (generation.backend = openai) use their tool calls; others follow a
    text protocol (Action / Action Input / Observation). The run stops after --max-steps model calls;
    without a final answer by then the exit status is 1.
    """
    app = open_app({"generation": generation_flags(sampling)})
    result = app.agent(
        task,
        tools=list(tools) or None,
        max_steps=max_steps,
        on_step=echo_step if trace and not as_json else None,
        database=database,
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        if not result.finished:
            click.echo(f"No final answer within {int(result.timings['model_calls'])} steps.", err=True)
        else:
            click.echo(result.answer + "\n")
        if result.citations:
            echo_citations(result.citations)
        t = result.timings
        click.echo(
            f"({result.model}, {result.protocol} protocol; {int(t['model_calls'])} model calls, "
            f"{int(t['tool_calls'])} tool calls, {t['total_s']:.1f} s)",
            err=True,
        )
    if not result.finished:
        sys.exit(1)


COMMANDS = (agent,)
