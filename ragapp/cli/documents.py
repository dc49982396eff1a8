"""`ragapp ingest`, `ragapp ingest-sql`, `ragapp search`, `ragapp ask`: putting documents in and getting answers out."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragapp.answer import Answer
from ragapp.cli.common import (
    echo_citations,
    emit_json,
    generation_flags,
    generation_options,
    json_option,
    open_app,
    retrieval_options,
    shown_path,
)
from ragapp.connectors.base import UNSUPPORTED
from ragapp.search import Filters, Mode

if TYPE_CHECKING:
    from ragapp.ingest import IngestReport


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--sync", is_flag=True, help="Also remove documents under PATHS whose files no longer exist.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@json_option
def ingest(
    paths: tuple[Path, ...], sync: bool, include: tuple[str, ...], exclude: tuple[str, ...], as_json: bool
) -> None:
    """Parse, chunk, embed and index files and folders.

    Folders are walked recursively (hidden files skipped). Only new or changed files are processed;
    files that cannot be read are listed with the reason and the rest is ingested.
    """
    app = open_app()
    report = app.ingest(
        paths,
        sync=sync,
        include=list(include) or None,
        exclude=list(exclude) or None,
        progress=sys.stderr.isatty(),
    )
    print_report(report, as_json)


@click.command("ingest-sql")
@click.argument("url")
@click.option("--table", metavar="TABLE", help="Ingest every row of TABLE (schema.table works too).")
@click.option("--query", metavar="SQL", help="Ingest the rows a SELECT returns (needs --id).")
@click.option(
    "--id",
    "id_columns",
    multiple=True,
    metavar="COLUMN",
    help="A column of the key that identifies a row (repeatable). Default for a table: its primary key.",
)
@click.option("--template", metavar="TEXT", help="The text of a row, e.g. '{name}: {description}'.")
@click.option("--title", metavar="TEXT", help="The title of a row's document, e.g. '{name}'.")
@click.option(
    "--meta", "metadata_columns", multiple=True, metavar="COLUMN", help="Store COLUMN as metadata (repeatable)."
)
@click.option("--sync", is_flag=True, help="Also remove the documents of rows that are gone from the table or query.")
@json_option
def ingest_sql(
    url: str,
    table: str | None,
    query: str | None,
    id_columns: tuple[str, ...],
    template: str | None,
    title: str | None,
    metadata_columns: tuple[str, ...],
    sync: bool,
    as_json: bool,
) -> None:
    """Ingest the rows of a database table or query, one document per row.

    URL is any SQLAlchemy database URL (sqlite:///shop.db, postgresql://user@host/db, ...; the
    driver must be installed). The database is only read: SQLite files are opened read-only.
    Give exactly one of --table or --query.

    Each row becomes one document, keyed by its id columns, so running the same command again only
    embeds the rows that are new or changed, and --sync also removes the rows that were deleted. A
    row's text is --template filled with its columns ({column} fields only; NULL is empty), or else
    one "column: value" line per non-empty column. --meta columns can be filtered on in search and
    ask with --filter meta.COLUMN=VALUE.

    \b
    Examples:
      ragapp ingest-sql sqlite:///shop.db --table products \\
          --template '{name}: {description}' --title '{name}' --meta category
      ragapp ingest-sql postgresql://reader@db/shop --sync --id sku \\
          --query 'SELECT sku, name, notes FROM items WHERE active'
    """
    app = open_app()
    report = app.ingest_sql(
        url,
        table=table,
        query=query,
        id_columns=id_columns,
        template=template,
        title=title,
        metadata_columns=metadata_columns,
        sync=sync,
        progress=sys.stderr.isatty(),
    )
    print_report(report, as_json, unit="rows")


def print_report(report: IngestReport, as_json: bool, unit: str = "files") -> None:
    """The summary both ingest commands print: counts, chunks, repairs, then what was skipped and why."""
    if as_json:
        emit_json(report.to_dict())
        return
    for note in report.notes:
        click.echo(f"Note: {note}", err=True)
    click.echo(
        f"Ingested {report.files_seen} {unit} in {report.seconds:.1f} s: {report.added} new, "
        f"{report.updated} updated, {report.unchanged} unchanged, {report.removed} removed"
    )
    click.echo(
        f"Chunks: {report.chunks_added} added, {report.chunks_removed} removed, "
        f"{report.chunks_embedded} embedded ({report.chunks_per_second:.1f} chunks/s)"
    )
    if report.repaired:
        fixed = ", ".join(f"{n} {what}" for what, n in report.repaired.items())
        click.echo(f"Repaired after an interrupted run: {fixed}")
    # Unsupported types (images, archives...) are summarised per type; real failures are listed one by one.
    unsupported: Counter[str] = Counter()
    failures = []
    for problem in report.problems:
        if problem.reason.startswith(UNSUPPORTED):
            unsupported[problem.reason.removeprefix(UNSUPPORTED).strip()] += 1
        else:
            failures.append(problem)
    if unsupported:
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in unsupported.most_common())
        total = sum(unsupported.values())
        click.echo(f"Skipped {total} file{'s' if total != 1 else ''} of unsupported type: {kinds}")
    for title, items in (("Not ingested", failures), ("Warnings", report.warnings)):
        if items:
            click.echo(f"{title} ({len(items)}):")
            for item in items:
                click.echo(f"  {shown_path(item.source)}: {item.reason}")


@click.command()
@click.argument("query")
@click.option("-k", type=click.IntRange(1, 100), help="How many passages (default: retrieval.k).")
@retrieval_options
@json_option
def search(
    query: str, k: int | None, mode: Mode | None, filters: tuple[str, ...], rerank: bool | None, as_json: bool
) -> None:
    """Show the passages most relevant to QUERY, best first.

    \b
    Examples:
      ragapp search "key rotation" --mode bm25          # exact words matter (names, error codes)
      ragapp search "key rotation" --filter kind=pdf --filter source='policies/**'
      ragapp search "key rotation" --no-rerank          # the fused ranking, before the reranker
    """
    hits = open_app().search(query, k, mode=mode, filters=Filters.parse(filters), rerank=rerank)
    if as_json:
        emit_json({"query": query, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        click.echo("No passages found" + (" (no document matches the filters)" if filters else "."))
    for n, hit in enumerate(hits, start=1):
        where = shown_path(hit.source) + (f"#{hit.anchor}" if hit.anchor else "")
        where += f" (page {hit.page})" if hit.page is not None else ""
        click.echo(f"[{n}] {hit.score:.3f} {where}" + (f" — {hit.heading}" if hit.heading else ""))
        snippet = " ".join(hit.text.split())
        click.echo(f"    {snippet[:300]}{'…' if len(snippet) > 300 else ''}")


@click.command()
@click.argument("question")
@click.option("-k", type=click.IntRange(1, 100), help="How many passages to retrieve (default: retrieval.k).")
@retrieval_options
@generation_options
@click.option("--no-stream", is_flag=True, help="Print the answer at the end instead of as it is written.")
@click.option(
    "--best-of",
    type=click.IntRange(1, 64),
    default=1,
    help="Sample N answers and print the one the reward model (reward.model) scores highest.",
)
@json_option
def ask(
    question: str,
    k: int | None,
    mode: Mode | None,
    filters: tuple[str, ...],
    rerank: bool | None,
    no_stream: bool,
    best_of: int,
    as_json: bool,
    **sampling: Any,
) -> None:
    """Answer QUESTION from the most relevant passages, citing them as [1], [2], ..."""
    flags = generation_flags(sampling)
    app = open_app({"generation": flags})
    streaming = not (as_json or no_stream or best_of > 1)

    streamed: list[str] = []

    def show(piece: str) -> None:
        streamed.append(piece)
        click.echo(piece, nl=False)

    answer = app.ask(
        question,
        k,
        on_token=show if streaming else None,
        mode=mode,
        filters=Filters.parse(filters),
        best_of=best_of,
        rerank=rerank,
    )
    if as_json:
        emit_json(answer.to_dict())
        return
    if streaming:  # end the streamed line, then one blank line
        click.echo("" if "".join(streamed).endswith("\n") else "\n")
    else:
        click.echo(answer.answer + "\n")
    if answer.candidates:
        scores = ", ".join(f"{c['reward']:.2f}" for c in answer.candidates)
        click.echo(f"(best of {len(answer.candidates)} by reward: {scores})", err=True)
    print_sources(answer)


def print_sources(answer: Answer) -> None:
    echo_citations(answer.citations, "Closest passages (none supports an answer):" if answer.abstained else "Sources:")
    t = answer.timings
    click.echo(
        f"({answer.model}; retrieval {t['retrieve_s'] * 1000:.0f} ms, generation {t['generate_s']:.1f} s"
        + (f", model load {t['load_s']:.1f} s" if t.get("load_s", 0) > 0.5 else "")
        + "; * = cited in the answer)",
        err=True,
    )


COMMANDS = (ingest, ingest_sql, search, ask)
