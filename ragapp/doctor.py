"""`ragapp doctor`: is every part of a workspace whole, and do the parts agree? Nothing is changed.

Each check ends in a finding: ok, warning (something the next `ragapp ingest` completes on its own:
pending chunks, an interrupted run, a stale keyword index) or error (damage a person must act on: a
damaged database, a vector index that lacks vectors of indexed chunks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from sqlalchemy import select, text

from ragapp.app import STAGING
from ragapp.errors import EmptyWorkspace, WorkspaceError

if TYPE_CHECKING:
    from ragapp.app import App
    from ragapp.store import Store

Level = Literal["ok", "warning", "error"]


@dataclass
class Finding:
    check: str  # database | vector index | keyword index | ingest runs | uploads
    level: Level
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def examine(app: App) -> list[Finding]:
    """Every check that applies to `app`'s workspace, in order; later checks need a database that opens."""
    try:
        store = app.open_store(create=False)
    except EmptyWorkspace as exc:
        return [Finding("database", "ok", str(exc))]
    except WorkspaceError as exc:
        return [Finding("database", "error", str(exc))]
    findings = [_database(store)]
    if findings[0].level == "error":
        return findings
    running = app.ingest_running()
    for check in (_vectors, _keywords, _runs, _uploads):
        try:
            findings.extend(check(app, store, running))
        except WorkspaceError as exc:  # a damaged page met by a later query
            findings.append(Finding("database", "error", str(exc)))
            break
    return findings


def _database(store: Store) -> Finding:
    if store.dialect != "sqlite":
        return Finding("database", "ok", f"{store.dialect} database reachable (integrity is the server's to check)")
    try:
        with store.engine.connect() as connection:
            rows = [str(r[0]) for r in connection.execute(text("PRAGMA integrity_check"))]
    except WorkspaceError as exc:
        return Finding("database", "error", str(exc))
    path = store.engine.url.database
    if rows == ["ok"]:
        return Finding("database", "ok", f"{path}: integrity_check ok")
    shown = "; ".join(rows[:3]) + (f" (and {len(rows) - 3} more)" if len(rows) > 3 else "")
    return Finding(
        "database", "error", f"{path}: integrity_check found damage: {shown}; restore it from a backup, or move it "
        "away and run `ragapp ingest PATH` again",
    )  # fmt: skip


def _vectors(app: App, store: Store, running: bool) -> list[Finding]:
    check = app.indexes.check(store)
    if check.state != "ok":
        return [Finding("vector index", "error", check.problem or check.state)]
    agree = f"{check.vectors} vectors; all {check.marked} chunks marked indexed have one"
    found = [Finding("vector index", "ok", agree)]
    pending = store.counts()["pending"]
    if pending and not running:
        waiting = f"{pending} chunks wait to be embedded: run `ragapp ingest PATH`"
        found.append(Finding("vector index", "warning", waiting))
    return found


def _keywords(app: App, store: Store, running: bool) -> list[Finding]:
    from ragapp.indexes.bm25_index import IDS_FILE, Bm25Index, KeywordIndexError

    keywords = app.indexes.keywords(store)
    name = keywords.pointer()
    chunks = store.chunk_ids()
    if name is None:
        if not chunks:
            return [Finding("keyword index", "ok", "none yet (nothing ingested)")]
        return [Finding("keyword index", "warning", "none yet: the next search or ingest builds it")]
    folder = app.workspace / name
    if not folder.is_dir():
        missing = f"{folder} is missing here: the next search builds it from the database"
        return [Finding("keyword index", "warning", missing)]
    try:
        Bm25Index.info(folder)
        ids = np.load(folder / IDS_FILE, allow_pickle=False)
    except (KeywordIndexError, OSError, ValueError) as exc:
        unreadable = f"{folder} is unreadable ({exc}): run `ragapp ingest PATH` to rebuild it"
        return [Finding("keyword index", "error", unreadable)]
    held = set(ids.tolist())
    if held != chunks and not running:
        return [
            Finding(
                "keyword index",
                "warning",
                f"{folder} holds {len(held)} chunks, the database {len(chunks)}: "
                "run `ragapp ingest PATH` to bring it in step",
            )  # fmt: skip
        ]
    return [Finding("keyword index", "ok", f"{folder.name}: {len(held)} chunks, as in the database")]


def _runs(app: App, store: Store, running: bool) -> list[Finding]:
    from ragapp.store import IngestRun

    with store.session() as s:
        stuck = list(s.scalars(select(IngestRun.id).where(IngestRun.status == "running").order_by(IngestRun.id)))
    if stuck and not running:
        runs = ", ".join(f"#{i}" for i in stuck)
        return [
            Finding(
                "ingest runs",
                "warning",
                f"run {runs} was interrupted (killed before it finished); the next `ragapp ingest` completes its work",
            )  # fmt: skip
        ]
    return [Finding("ingest runs", "ok", "an ingest is running" if running else "no run left unfinished")]


def _uploads(app: App, store: Store, running: bool) -> list[Finding]:
    """Staged upload folders whose job is gone or finished: `ragapp serve` would never ingest them."""
    from ragapp.store import IngestJobRow

    staging = app.workspace / STAGING
    folders = sorted(p.name for p in staging.iterdir() if p.is_dir()) if staging.is_dir() else []
    if not folders:
        return []
    with store.session() as s:
        waiting = set(s.scalars(select(IngestJobRow.id).where(IngestJobRow.status.in_(("queued", "running")))))
    orphans = [name for name in folders if name not in waiting]
    if orphans:
        shown = ", ".join(orphans[:5]) + (f" (and {len(orphans) - 5} more)" if len(orphans) > 5 else "")
        orphaned = f"{len(orphans)} staged upload folder(s) in {staging} have no waiting job: {shown}"
        return [Finding("uploads", "warning", orphaned)]
    return [Finding("uploads", "ok", f"{len(folders)} staged upload(s), each with a waiting job")]
