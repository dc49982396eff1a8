"""Collections: named workspaces served by one server. `default` is the server's own workspace; the
others live in `<workspace>/collections/<name>/`, each an ordinary workspace that the CLI can open too.

Models are shared: every App loads them through the same per-process caches.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from pathlib import Path

from ragapp.app import App
from ragapp.config import CONFIG_FILE
from ragapp.errors import Conflict, NotFound, UsageError, WorkspaceError

DEFAULT = "default"
FOLDER = "collections"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
UPLOADS = "uploads"  # uploaded files, ingested from here
STAGING = ".staging"  # uploads accepted but not yet ingested, one folder per job


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsageError(
            f"collection name {name!r}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return name


class Collections:
    def __init__(self, root: Path):
        self.root = root
        self._apps: dict[str, App] = {}
        self._lock = threading.Lock()

    def folder(self, name: str) -> Path:
        return self.root if name == DEFAULT else self.root / FOLDER / check_name(name)

    def names(self) -> list[str]:
        parent = self.root / FOLDER
        others = (
            sorted(p.name for p in parent.iterdir() if p.is_dir() and NAME.fullmatch(p.name)) if parent.is_dir() else []
        )
        return [DEFAULT, *others]

    def exists(self, name: str) -> bool:
        return name == DEFAULT or (NAME.fullmatch(name) is not None and self.folder(name).is_dir())

    def app(self, name: str) -> App:
        with self._lock:
            app = self._apps.get(name)
            if app is None:
                if not self.exists(name):
                    raise NotFound(f"no collection named {name!r}")
                app = self._apps[name] = App(self.folder(name))
            return app

    def create(self, name: str) -> None:
        """A new, empty collection with a copy of the server's ragapp.toml; built aside, then renamed in."""
        target = self.folder(check_name(name))
        with self._lock:
            if name == DEFAULT or target.exists():
                raise Conflict(f"collection {name!r} exists already")
            target.parent.mkdir(parents=True, exist_ok=True)
            building = target.parent / f".new-{name}-{uuid.uuid4().hex}"
            building.mkdir()
            try:
                if (self.root / CONFIG_FILE).is_file():
                    shutil.copyfile(self.root / CONFIG_FILE, building / CONFIG_FILE)
                App(building).open_store(create=True).close()
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
            if not target.is_dir():
                raise NotFound(f"no collection named {name!r}")
            app = self._apps.pop(name, None) or App(target)
            try:
                with app.ingest_lock():
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
