"""Small pieces shared by the command modules."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ragapp.app import App

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")


def open_app(config: dict[str, dict[str, Any]] | None = None) -> App:
    workspace: Path = click.get_current_context().find_root().obj
    return App(workspace, config=config)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def shown_path(source: str) -> str:
    """Paths under the current folder are shown relative to it; others as stored."""
    try:
        rel = os.path.relpath(source)
    except ValueError:
        return source
    return source if rel.startswith("..") else rel
