"""`ragapp serve` and `ragapp keys`: the HTTP API over the workspace, and who may call it."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import click

from ragapp.cli.common import emit_json, json_option, open_app, root_flags, table
from ragapp.errors import UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@click.command()
@click.option("--host", help="Address to listen on (default: server.host, 127.0.0.1). Others need an API key.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: server.port, 8080; 0 = any free port).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API: OpenAI-compatible chat, query, search, collections, a chat widget.

    \b
    Endpoints (OpenAPI schema at /openapi.json):
      POST /v1/chat/completions     OpenAI chat; `model` = collection; stream: true for SSE
      POST /v1/query, /v1/search    answer with citations / passages only
      /v1/collections[/NAME/documents]   manage collections, upload files (background jobs)
      GET  /widget, /widget.js      an embeddable chat box
      GET  /healthz, /metrics       health, Prometheus metrics
    Without any API key (`ragapp keys create`) it listens on loopback only and asks for no key.
    """
    import uvicorn

    from ragapp.service import Service, create_app
    from ragapp.service.keys import KeyStore

    app = open_app({"server": {"host": host, "port": port}})
    settings = app.config.server
    keyed = KeyStore(app.open_store(create=True)).required()
    app.close()
    if not keyed and not is_loopback(settings.host):
        raise UsageError(
            f"refusing to listen on {settings.host} with no API key: anyone could read the documents. "
            "Create one with `ragapp keys create --admin` (or listen on 127.0.0.1)"
        )
    sock = _bind(settings.host, settings.port)
    bound_port = sock.getsockname()[1]
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    api = create_app(Service(app.workspace, config=root_flags()))
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", timeout_graceful_shutdown=10))
    access = "API keys required" if keyed else "no API key needed"
    click.echo(f"Serving {app.workspace} at http://{shown}:{bound_port} ({access}; chat widget at /widget)")
    server.run(sockets=[sock])


@click.group()
def keys() -> None:
    """API keys for `ragapp serve`: each reads the collections it names; admin keys manage everything.

    Once any key exists, every request needs one (`Authorization: Bearer KEY`).
    """


@keys.command("create")
@click.option(
    "--collection", "collections", multiple=True, metavar="NAME", help="A collection it may read (repeatable)."
)
@click.option(
    "--admin", is_flag=True, help="Read every collection, create and delete them, upload and remove documents."
)
@click.option("--name", default="", help="A note to recognise the key by (who or what uses it).")
@json_option
def create_key(collections: tuple[str, ...], admin: bool, name: str, as_json: bool) -> None:
    """Create a key and print it. It is shown only now: only its hash is stored."""
    from ragapp.service.collections import Collections
    from ragapp.service.keys import KeyStore

    if not collections and not admin:
        raise UsageError("a key needs --collection NAME (repeatable) or --admin")
    app = open_app()
    known = Collections(Path(app.workspace))
    missing = [c for c in collections if not known.exists(c)]
    if missing:
        raise UsageError(f"no collection named {', '.join(map(repr, missing))} (have: {', '.join(known.names())})")
    secret, key = KeyStore(app.open_store(create=True)).create(collections, admin=admin, name=name)
    if as_json:
        emit_json({**key.to_dict(), "key": secret})
        return
    scope = "admin" if admin else "reads " + ", ".join(key.collections)
    click.echo(secret)
    click.echo(f"(key #{key.id}, {scope}; shown only once: store it now)", err=True)


@keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """List keys (never their secrets)."""
    from ragapp.service.keys import KeyStore

    app = open_app()
    found = KeyStore(app.open_store(create=True)).list()
    if as_json:
        emit_json([k.to_dict() for k in found])
        return
    if not found:
        click.echo("No API keys: `ragapp serve` listens on loopback only and asks for none.")
        return
    rows = [
        [
            str(k.id),
            k.prefix + "…",
            "admin" if k.admin else ", ".join(k.collections),
            k.name,
            k.created_at.isoformat(timespec="seconds"),
            "revoked" if k.revoked else "active",
        ]
        for k in found
    ]
    click.echo(table(rows, ["id", "key", "reads", "name", "created", "status"]))


@keys.command("revoke")
@click.argument("key_id", type=int)
def revoke_key(key_id: int) -> None:
    """Revoke key KEY_ID (see `ragapp keys list`); requests with it are refused from now on."""
    from ragapp.service.keys import KeyStore

    if not KeyStore(open_app().open_store(create=True)).revoke(key_id):
        raise UsageError(f"no API key #{key_id}")
    click.echo(f"Revoked key #{key_id}.")


COMMANDS = (serve, keys)
