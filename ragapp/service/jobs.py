"""Background ingestion of uploaded files: a queue kept in SQL, worked through by one thread.

An upload is written whole to `<collection>/.staging/<job>/` before its job is queued, so a bad or
interrupted request leaves nothing behind. The worker moves the files into `<collection>/uploads/`
and ingests them. Jobs found queued or running at start-up (the server was stopped) are run again:
moving and ingesting are both safe to repeat.

Replicas sharing one database see each other's jobs; each runs only those it holds the files of
(`worker`), and claims a job with a conditional update, so no job runs twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.exc import DBAPIError

from ragapp.app import STAGING
from ragapp.errors import NotFound, RagappError
from ragapp.service.collections import UPLOADS, Collections
from ragapp.store import IngestJobRow, Store, utcnow

log = logging.getLogger("ragapp.service")
DATABASE_TRIES = 3  # runs of a job that a database error interrupted, before it is failed
MAX_BACKOFF_S = 30.0  # the longest wait between retries of a worker that keeps failing (e.g. database down)


def job_dict(row: IngestJobRow) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat(timespec="seconds") if value is not None else None

    return {
        "id": row.id,
        "collection": row.collection,
        "status": row.status,
        "files": row.files,
        "report": row.report,
        "error": row.error,
        "created_at": when(row.created_at),
        "started_at": when(row.started_at),
        "finished_at": when(row.finished_at),
    }


class Jobs:
    def __init__(self, store: Store, collections: Collections):
        self.store = store
        self.collections = collections
        self.worker = f"{socket.gethostname()}:{collections.root.resolve()}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tries: dict[str, int] = {}  # job id -> runs cut short by a database error
        # Held while staged files move into uploads/, so that removing an upload never races a job's move.
        self.moving = threading.Lock()
        self.backoff_s = 0.5  # the first wait after the worker fails; doubled while failures repeat

    def staging(self, collection: str, job_id: str) -> Path:
        return self.collections.folder(collection) / STAGING / job_id

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def submit(self, job_id: str, collection: str, files: list[str]) -> dict[str, Any]:
        """Queue a job whose files are already in its staging folder."""
        row = IngestJobRow(id=job_id, collection=collection, files=files, worker=self.worker)
        with self.store.session() as s:
            s.add(row)
            s.commit()
            out = job_dict(row)
        self._wake.set()
        return out

    def get(self, job_id: str) -> dict[str, Any]:
        with self.store.session() as s:
            row = s.get(IngestJobRow, job_id)
            if row is None:
                raise NotFound(f"no job {job_id!r}")
            return job_dict(row)

    def busy(self, collection: str) -> bool:
        with self.store.session() as s:
            query = select(IngestJobRow.id).where(
                IngestJobRow.collection == collection, IngestJobRow.status.in_(("queued", "running"))
            )
            return s.scalar(query.limit(1)) is not None

    def pending(self, collection: str, name: str) -> bool:
        """Whether a queued or running job of `collection` has a file called `name`."""
        with self.store.session() as s:
            query = select(IngestJobRow.files).where(
                IngestJobRow.collection == collection, IngestJobRow.status.in_(("queued", "running"))
            )
            return any(name in files for files in s.scalars(query))

    def outcomes(self, collection: str) -> dict[str, dict[str, Any]]:
        """For each file name ever uploaded to `collection`, what its newest job did with it:
        {"job_id", "status" (the job's), "reason" (why it was not ingested, if it was not)}."""
        with self.store.session() as s:
            rows = s.scalars(
                select(IngestJobRow).where(IngestJobRow.collection == collection).order_by(IngestJobRow.created_at)
            ).all()
            out: dict[str, dict[str, Any]] = {}
            for row in rows:
                problems = {p.get("source"): p.get("reason") for p in (row.report or {}).get("problems", [])}
                for name in row.files:
                    reason = row.error if row.status == "failed" else problems.get(name)
                    out[name] = {"job_id": row.id, "status": row.status, "reason": reason}
        return out

    def drop_collection(self, collection: str) -> None:
        """Forget a deleted collection's finished jobs: a new collection of the same name starts clean."""
        with self.store.session() as s:
            s.execute(
                delete(IngestJobRow).where(
                    IngestJobRow.collection == collection, IngestJobRow.status.in_(("completed", "failed"))
                )
            )
            s.commit()

    # -- the worker -------------------------------------------------------------------------------

    def start(self) -> None:
        with self.store.session() as s:  # a job left running was cut short by a stop: run it again
            s.execute(
                update(IngestJobRow).where(IngestJobRow.status == "running", self._mine()).values(status="queued")
            )
            s.commit()
        self._drop_unqueued_staging()
        self._thread = threading.Thread(target=self._work, name="ragapp-ingest-jobs", daemon=True)
        self._thread.start()

    def _drop_unqueued_staging(self, older_than_s: float = 60.0) -> None:
        """Remove staging folders that never got a job row: their upload was cut short (the server was
        killed, the client left) before it was answered, so nobody was told it was accepted. Folders
        younger than `older_than_s` may be an upload another process on this folder is still writing."""
        cutoff = time.time() - older_than_s
        for collection in self.collections.names():
            staging = self.collections.folder(collection) / STAGING
            if not staging.is_dir():
                continue
            folders = [p for p in staging.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff]
            if not folders:
                continue
            with self.store.session() as s:
                queued = set(s.scalars(select(IngestJobRow.id).where(IngestJobRow.id.in_([p.name for p in folders]))))
            for folder in folders:
                if folder.name not in queued:
                    log.warning("removing %s: an upload that was never accepted (cut short before its job)", folder)
                    shutil.rmtree(folder, ignore_errors=True)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _mine(self) -> Any:
        return or_(IngestJobRow.worker == self.worker, IngestJobRow.worker.is_(None))

    def _next(self) -> str | None:
        """Claim the oldest queued job of this server's: queued -> running in one conditional update."""
        with self.store.session() as s:
            query = select(IngestJobRow.id).where(IngestJobRow.status == "queued", self._mine())
            for job_id in s.scalars(query.order_by(IngestJobRow.created_at).limit(5)).all():
                claimed = s.execute(
                    update(IngestJobRow)
                    .where(IngestJobRow.id == job_id, IngestJobRow.status == "queued")
                    .values(status="running", started_at=utcnow())
                )
                s.commit()
                assert isinstance(claimed, CursorResult)  # an UPDATE's result: it has a row count
                if claimed.rowcount:
                    return job_id
            return None

    def _set(self, job_id: str, **values: Any) -> None:
        with self.store.session() as s:
            s.execute(update(IngestJobRow).where(IngestJobRow.id == job_id).values(**values))
            s.commit()

    def _work(self) -> None:
        """Run jobs until stopped. Nothing may end this thread: a database error (or any other) is logged,
        the worker waits a little longer each time it repeats (up to `MAX_BACKOFF_S`) and tries again."""
        failures = 0
        while not self._stop.is_set():
            try:
                self._work_once()
                failures = 0
            except Exception:
                failures += 1
                wait = self._backoff(failures)
                log.exception("the ingest-jobs worker failed (%d in a row); retrying in %.1f s", failures, wait)
                self._stop.wait(wait)

    def _work_once(self) -> None:
        """Claim and run one job, or wait for one to be queued."""
        job_id = self._next()
        if job_id is None:
            self._wake.wait(5.0)
            self._wake.clear()
            return
        outcome: dict[str, Any]
        try:
            outcome = {"status": "completed", "report": self._run(job_id), "finished_at": utcnow()}
        except RagappError as exc:
            outcome = {"status": "failed", "error": str(exc), "finished_at": utcnow()}
        except DBAPIError as exc:
            # The database failed, not the files: run the job again later, a few times, before giving up.
            tries = self._tries[job_id] = self._tries.get(job_id, 0) + 1
            log.exception("ingest job %s: database error (try %d of %d)", job_id, tries, DATABASE_TRIES)
            if tries < DATABASE_TRIES:
                self._finish(job_id, status="queued", started_at=None)
                self._stop.wait(self._backoff(tries + 1))
                return
            outcome = {"status": "failed", "error": f"database error: {exc.orig or exc}", "finished_at": utcnow()}
        except Exception as exc:  # a bug must fail the job, not the worker
            log.exception("ingest job %s failed", job_id)
            outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "finished_at": utcnow()}
        self._tries.pop(job_id, None)
        self._finish(job_id, **outcome)

    def _backoff(self, failures: int) -> float:
        """The wait after `failures` failures in a row: `backoff_s`, doubling, at most `MAX_BACKOFF_S`."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** min(failures - 1, 10))

    def _finish(self, job_id: str, **values: Any) -> None:
        """Record a job's outcome, retrying while the database refuses; a job is never left `running`."""
        failures = 0
        while True:
            try:
                self._set(job_id, **values)
                return
            except Exception:
                failures += 1
                if self._stop.is_set():  # shutting down: `start` queues the job again next time
                    raise
                wait = self._backoff(failures)
                log.exception("cannot record the outcome of ingest job %s; retrying in %.1f s", job_id, wait)
                self._stop.wait(wait)

    def _run(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        collection = job["collection"]
        app = self.collections.app(collection)  # NotFound if it was deleted meanwhile
        staged = self.staging(collection, job_id)
        uploads = self.collections.folder(collection) / UPLOADS
        uploads.mkdir(exist_ok=True)
        with self.moving:
            for name in job["files"]:
                if (staged / name).exists():
                    os.replace(staged / name, uploads / name)
        shutil.rmtree(staged, ignore_errors=True)
        paths = [uploads / name for name in job["files"]]
        report = app.ingest([p for p in paths if p.exists()]).to_dict()
        for key in ("problems", "warnings"):  # clients know their files by name, not by the server's paths
            for problem in report[key]:
                problem["source"] = Path(problem["source"]).name
        sources = {str(p.resolve()) for p in paths}
        report["documents"] = [
            {"id": d["id"], "name": Path(d["source"]).name, "chunks": d["chunks"]}
            for d in app.documents()
            if d["source"] in sources
        ]
        return report
