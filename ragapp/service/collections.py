"""Collections: named workspaces served by one server. `default` is the server's own workspace; the
others live in `<workspace>/collections/<name>/`, each an ordinary workspace that the CLI can open too.

Models are shared: every App loads them through the same per-process caches.

On PostgreSQL (servers sharing one database), a collection is a schema of that database, so every
replica sees the same collections: the list comes from the database, and a replica that has no
folder for a collection yet makes one (its ragapp.toml names the schema) on first use.

A collection's App reads its folder's ragapp.toml (a copy of the server's, so that the CLI sees what the
server uses) under the server's flags and, on PostgreSQL, its schema, both given as config objects.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ragapp.app import App
from ragapp.config import CONFIG_FILE, merge_layers, read_toml, toml_text
from ragapp.errors import Conflict, NotFound, UsageError, WorkspaceError
from ragapp.generators import Generator
from ragapp.service.names import invisible_character
from ragapp.store import Store

DEFAULT = "default"
FOLDER = "collections"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
UPLOADS = "uploads"  # uploaded files, ingested from here
SCHEMA_COMMENT = "ragapp collection: "  # PostgreSQL: the comment on a collection's schema, with its name


def pg_schema(name: str) -> str:
    """The schema of collection `name`: names may hold '-' and be longer than PostgreSQL likes, so a hash."""
    return "collection_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    problem = invisible_character(name)
    if problem is not None:
        raise UsageError(f"collection name {name!r} {problem}: use 1-64 of a-z, 0-9, '-' and '_'")
    if not NAME.fullmatch(name):
        raise UsageError(
            f"collection name {name!r}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return name


class Collections:
    def __init__(
        self,
        root: Path,
        store: Store | None = None,
        config: dict[str, dict[str, Any]] | None = None,
        generator: Generator | None = None,
    ):
        """`store`: the server's own; when it is PostgreSQL, collections are schemas of its database.
        `config`: settings over every collection's ragapp.toml (the server's flags, `--database-url`).
        `generator`: a loaded one every collection answers with (else each loads what its config names)."""
        self.root = root
        self.shared = store if store is not None and store.dialect == "postgresql" else None
        self.config = config or {}
        self.generator = generator
        self._apps: dict[str, App] = {}
        self._lock = threading.Lock()

    def folder(self, name: str) -> Path:
        return self.root if name == DEFAULT else self.root / FOLDER / check_name(name)

    def names(self) -> list[str]:
        if self.shared is not None:
            return [DEFAULT, *self._schemas()]
        parent = self.root / FOLDER
        others = (
            sorted(p.name for p in parent.iterdir() if p.is_dir() and NAME.fullmatch(p.name)) if parent.is_dir() else []
        )
        return [DEFAULT, *others]

    def exists(self, name: str) -> bool:
        if name == DEFAULT:
            return True
        if NAME.fullmatch(name) is None:
            return False
        return name in self._schemas() if self.shared is not None else self.folder(name).is_dir()

    def _schemas(self) -> list[str]:
        assert self.shared is not None
        with self.shared.engine.connect() as connection:
            comments = connection.scalars(
                text(
                    "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname LIKE 'collection\\_%'"
                )
            ).all()
        return sorted(c[len(SCHEMA_COMMENT) :] for c in comments if c and c.startswith(SCHEMA_COMMENT))

    def _schema_layer(self, name: str) -> dict[str, dict[str, Any]]:
        return {"database": {"pg_schema": pg_schema(name)}} if self.shared is not None and name != DEFAULT else {}

    def settings(self, name: str) -> dict[str, dict[str, Any]]:
        """What collection `name`'s App gets over its folder's ragapp.toml: the server's flags and its schema
        (so a hand-edited folder file cannot point the server at another collection's tables)."""
        return merge_layers(self.config, self._schema_layer(name))

    def _write_config(self, folder: Path, name: str) -> None:
        """The folder's ragapp.toml, for the CLI (`ragapp -w FOLDER`): a copy of the server's; on PostgreSQL
        the server's settings with the collection's schema added, written as data (comments are not kept)."""
        server_toml = self.root / CONFIG_FILE
        if self.shared is not None:
            settings = toml_text(merge_layers(read_toml(server_toml), self._schema_layer(name)))
            header = f"# ragapp serve: collection {name!r}, the server's {server_toml} with this collection's schema\n"
            (folder / CONFIG_FILE).write_text(header + settings, encoding="utf-8")
        elif server_toml.is_file():
            shutil.copyfile(server_toml, folder / CONFIG_FILE)

    def app(self, name: str) -> App:
        with self._lock:
            app = self._apps.get(name)
            if app is None:
                if not self.exists(name):
                    raise NotFound(f"no collection named {name!r}")
                folder = self.folder(name)
                if self.shared is not None and not (folder / CONFIG_FILE).is_file():
                    folder.mkdir(parents=True, exist_ok=True)  # made by another replica: this one's folder
                    self._write_config(folder, name)
                app = self._apps[name] = App(folder, config=self.settings(name), generator=self.generator)
            return app

    def create(self, name: str) -> None:
        """A new, empty collection with a copy of the server's ragapp.toml; built aside, then renamed in."""
        target = self.folder(check_name(name))
        with self._lock:
            if name == DEFAULT or (name in self._schemas() if self.shared is not None else target.exists()):
                raise Conflict(f"collection {name!r} exists already")
            if self.shared is not None and target.exists():  # left from a collection deleted through a replica
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            building = target.parent / f".new-{name}-{uuid.uuid4().hex}"
            building.mkdir()
            try:
                self._write_config(building, name)
                App(building, config=self.settings(name)).open_store(create=True).close()
                if self.shared is not None:  # now it is listed: the tables are there
                    with self.shared.engine.begin() as connection:
                        # COMMENT takes no bound parameter; a checked name holds no quote.
                        comment = f"'{SCHEMA_COMMENT}{check_name(name)}'"
                        connection.execute(text(f"COMMENT ON SCHEMA {pg_schema(name)} IS {comment}"))
                os.rename(building, target)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise

    def delete(self, name: str) -> None:
        """Remove a collection and everything in it; refused while an ingest runs in it."""
        if name == DEFAULT:
            raise UsageError("the default collection is the server's own workspace and cannot be deleted")
        target = self.folder(name)
        with self._lock:
            if not self.exists(name):
                raise NotFound(f"no collection named {name!r}")
        app = self.app(name)
        with self._lock:
            self._apps.pop(name, None)
            try:
                if self.shared is not None:
                    app.open_store()  # so that the lock below is the database-wide one too
                with app.ingest_lock():
                    if self.shared is not None:
                        with app.open_store().engine.begin() as connection:
                            connection.execute(text(f"DROP SCHEMA {pg_schema(name)} CASCADE"))
                    app.close()
                    # One rename takes it out of sight; the slow removal happens after.
                    doomed = target.parent / f".deleted-{name}-{uuid.uuid4().hex}"
                    os.rename(target, doomed)
            except WorkspaceError:
                self._apps[name] = app
                raise Conflict(f"an ingest is running in collection {name!r}; delete it when it is done") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for app in self._apps.values():
                app.close()
            self._apps.clear()
