"""`ragapp status`, `ragapp doctor` and `ragapp config show`: what is in the workspace, whether its parts are
whole and agree, and how it is configured."""

from __future__ import annotations

import json

import click

from ragapp.cli.common import emit_json, json_option, open_app


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Show the workspace's documents, chunks, index and models."""
    app = open_app()
    info = app.status()
    if as_json:
        emit_json(info)
        return
    click.echo(f"Workspace:  {info['workspace']}" + ("" if info["exists"] else " (not created yet)"))
    source = app.settings.origin.get("database.url")  # where a database other than the workspace's was named
    click.echo(f"Database:   {info['database']}" + (f" (from {source})" if source else ""))
    click.echo(f"Documents:  {info['documents']}")
    click.echo(
        f"Chunks:     {info['chunks']}" + (f" ({info['pending']} waiting to be indexed)" if info["pending"] else "")
    )
    index = info["index"]
    if "table" in index:
        click.echo(f"Index:      pgvector, table {index['table']}")
    else:
        click.echo(f"Index:      {index['kind']}, {index['bytes'] / 1e6:.1f} MB")
    if index.get("state", "ok") != "ok":
        click.echo(f"            {index['state'].upper()}: {index.get('problem', '')}")
    if "keyword_index" in info:
        click.echo(f"Keywords:   BM25, {info['keyword_index']['bytes'] / 1e6:.1f} MB")
    click.echo(f"Embedding:  {info['embedding']['model']} on {info['embedding']['device']}")
    g = info["generation"]
    where = g["base_url"] if g["backend"] == "openai" else f"{g['device']}, {g['dtype']}"
    adapter = f" + adapter {g['adapter']}" if g.get("adapter") else ""
    click.echo(f"Generation: {g['backend']}: {g['model']}{adapter} ({where})")
    if info["reranker"]["model"]:
        click.echo(f"Reranker:   {info['reranker']['model']} (top {info['reranker']['candidates']} candidates)")
    if info["reward"]["model"]:
        click.echo(f"Reward:     {info['reward']['model']}")
    run = info["last_ingest"]
    if run:
        click.echo(
            f"Last ingest: #{run['id']} {run['status']} at {run['started_at']}, {run['files_seen']} files, "
            f"{run['chunks_added']} chunks added, {run['failed']} not ingested, {run['seconds']} s"
        )


@click.group()
def config() -> None:
    """Inspect the configuration (ragapp.toml < RAGAPP_* environment < flags)."""


@config.command("show")
@json_option
def config_show(as_json: bool) -> None:
    """Print the effective configuration and where each value comes from."""
    described = open_app().settings.describe()
    if as_json:
        emit_json(described)
        return
    for section, values in described.items():
        click.echo(f"[{section}]")
        for key, item in values.items():
            origin = "" if item["from"] == "default" else f"  # from {item['from']}"
            click.echo(f"{key} = {json.dumps(item['value'], ensure_ascii=False)}{origin}")
        click.echo()


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check the workspace: database integrity, vector and keyword indexes against the database,
    interrupted ingests, orphaned uploads. Changes nothing; exits 1 if something needs repair.

    Warnings are what the next `ragapp ingest` completes by itself; errors need you (see
    docs/troubleshooting.md)."""
    from ragapp.doctor import examine

    app = open_app()
    findings = examine(app)
    failed = any(f.level == "error" for f in findings)
    if as_json:
        emit_json({"workspace": str(app.workspace), "ok": not failed, "findings": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            click.echo(f"{f.level.upper():8} {f.check}: {f.message}")
        problems = sum(f.level != "ok" for f in findings)
        click.echo("No problems found." if not problems else f"{problems} finding(s) need attention.")
    if failed:
        raise SystemExit(1)


COMMANDS = (status, doctor, config)
