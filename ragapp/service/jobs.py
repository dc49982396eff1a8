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
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update

from ragapp.errors import NotFound, RagappError
from ragapp.service.collections import STAGING, UPLOADS, Collections
from ragapp.store import IngestJobRow, Store, utcnow

log = logging.getLogger("ragapp.service")


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

    # -- the worker -------------------------------------------------------------------------------

    def start(self) -> None:
        with self.store.session() as s:  # a job left running was cut short by a stop: run it again
            s.execute(update(IngestJobRow).where(IngestJobRow.status == "running", self._mine()).values(status="queued"))
            s.commit()
        self._thread = threading.Thread(target=self._work, name="ragapp-ingest-jobs", daemon=True)
        self._thread.start()

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
                if claimed.rowcount:
                    return job_id
            return None

    def _set(self, job_id: str, **values: Any) -> None:
        with self.store.session() as s:
            s.execute(update(IngestJobRow).where(IngestJobRow.id == job_id).values(**values))
            s.commit()

    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._next()
            if job_id is None:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            try:
                report = self._run(job_id)
            except RagappError as exc:
                self._set(job_id, status="failed", error=str(exc), finished_at=utcnow())
            except Exception as exc:  # a bug must fail the job, not the worker
                log.exception("ingest job %s failed", job_id)
                self._set(job_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=utcnow())
            else:
                self._set(job_id, status="completed", report=report, finished_at=utcnow())

    def _run(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        collection = job["collection"]
        app = self.collections.app(collection)  # NotFound if it was deleted meanwhile
        staged = self.staging(collection, job_id)
        uploads = self.collections.folder(collection) / UPLOADS
        uploads.mkdir(exist_ok=True)
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
