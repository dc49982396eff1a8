"""Incremental ingestion: files -> documents -> chunks (SQL) -> vectors (index).

Each document is written to SQL in one transaction with its chunks marked not-yet-indexed; embedding
then works through the pending chunks, wherever they came from (this run, or a run that was killed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from tqdm import tqdm

from ragapp.chunking import Chunk, Chunker
from ragapp.connectors import Document, FileProblem, ParseError
from ragapp.connectors.base import ParseLimits
from ragapp.connectors.filesystem import discover, parse, read_bytes
from ragapp.embedding import Embedder
from ragapp.keyword_index import WorkspaceKeywords
from ragapp.store import IngestProblem, IngestRun, Store, utcnow
from ragapp.vector_index import VectorIndex

log = logging.getLogger(__name__)

# Chunks embedded per step. The model sorts each step's texts by length before batching them, so a wide
# step pads less; 1024 is about 10 s of work, so progress still moves.
EMBED_BATCH = 1024
SAVE_EVERY_S = 60.0  # how much embedding work a crash can cost at most
T = TypeVar("T")


@dataclass
class IngestReport:
    run_id: int = 0
    paths: list[str] = field(default_factory=list)
    files_seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    problems: list[FileProblem] = field(default_factory=list)  # not ingested (an older version may remain)
    warnings: list[FileProblem] = field(default_factory=list)  # ingested, with something worth knowing
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_embedded: int = 0  # includes chunks left pending by an interrupted run
    repaired: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [asdict(p) for p in self.problems]
        out["warnings"] = [asdict(p) for p in self.warnings]
        out["chunks_per_second"] = round(self.chunks_per_second, 2)
        out["seconds"] = round(self.seconds, 3)
        return out


class Ingestor:
    def __init__(
        self,
        store: Store,
        index: VectorIndex,
        keywords: WorkspaceKeywords,
        embedder: Embedder,
        make_chunker: Callable[[], Chunker],
        max_bytes: int,
        limits: ParseLimits | None = None,
    ):
        """`make_chunker` is called on the first changed document: a run that finds nothing changed never
        loads the embedding model (its tokenizer sizes the chunks)."""
        self.store = store
        self.index = index
        self.keywords = keywords
        self.embedder = embedder
        self._make_chunker = make_chunker
        self.max_bytes = max_bytes
        self.limits = limits or ParseLimits()  # per file: PDF, .docx, HTML parse in a capped worker process
        self._embedded_up_to = 0
        self._last_save = time.monotonic()

    @functools.cached_property
    def chunker(self) -> Chunker:
        return self._make_chunker()

    def run(
        self,
        roots: Sequence[Path],
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        sync: bool = False,
        progress: bool = True,
    ) -> IngestReport:
        report = IngestReport(paths=[str(r) for r in roots])

        def work(known: dict[str, str]) -> None:
            seen: set[str] = set()
            candidates = list(discover(roots, include, exclude))
            for item in self._bar(candidates, "file", report, progress):
                if isinstance(item, FileProblem):
                    report.problems.append(item)
                    continue
                seen.add(str(item))
                self._ingest_file(item, known, report)
            if sync:
                self._remove_vanished(roots, seen, report)

        return self._run(report, work, progress)

    def run_documents(
        self,
        documents: Iterable[Document | FileProblem],
        progress: bool = True,
        sync_prefix: str | None = None,
    ) -> IngestReport:
        """Documents from a connector other than the file system, keyed by `source`.

        A FileProblem among them is an item the connector could not turn into a document: it is reported,
        and its older version (if any) is kept. With `sync_prefix`, stored documents whose source starts
        with it and that did not come this time are removed, once the documents have all come (a
        connector that fails half-way removes nothing).
        """
        report = IngestReport(paths=["(documents)"])

        def work(known: dict[str, str]) -> None:
            seen: set[str] = set()
            for item in self._bar(documents, "document", report, progress):
                report.files_seen += 1
                seen.add(item.source)
                if isinstance(item, FileProblem):
                    report.problems.append(item)
                    continue
                document = item
                content = json.dumps([document.kind, document.title, document.text, document.metadata], default=str)
                digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
                if known.get(document.source) == digest:
                    report.unchanged += 1
                    continue
                chunks = self.chunker.chunk(document)
                if not chunks:
                    report.problems.append(FileProblem(document.source, "no text to index"))
                    continue
                self._store(document, chunks, digest, len(document.text), 0.0, known, report)
            if sync_prefix:
                self._delete([s for s in known if s.startswith(sync_prefix) and s not in seen], report)

        return self._run(report, work, progress)

    def remove(self, sources: Sequence[str]) -> IngestReport:
        """Remove documents (by source) with their chunks from SQL and both indexes."""
        report = IngestReport(paths=["(removal)"])

        def work(known: dict[str, str]) -> None:
            self._delete([s for s in sources if s in known], report)

        return self._run(report, work, progress=False)

    def _run(self, report: IngestReport, work: Callable[[dict[str, str]], None], progress: bool) -> IngestReport:
        """The bookkeeping around every ingest: repair, record the run, embed, keep both indexes in step."""
        started = time.monotonic()
        self._started = started
        report.run_id = self._start_run(report.paths)
        try:
            report.notes.extend(self.index.notes)
            report.repaired = {k: v for k, v in self.index.reconcile().items() if v}
            work({d.source: d.content_hash for d in self.store.documents_by_source().values()})
            self._embed_pending(report, progress=progress)
            self.index.save()
            if self.keywords.sync():
                report.notes.append("keyword index rebuilt")
            report.seconds = time.monotonic() - started
            self._finish_run(report, "completed")
        except BaseException as exc:
            report.seconds = time.monotonic() - started
            status = "interrupted" if _interrupted(exc) else "failed"
            try:
                self._finish_run(report, status)
            except OperationalError as unrecorded:  # never in place of the error that ended the run
                log.warning(
                    "ingest run %s ended (%s) but could not be recorded: %s; it shows as interrupted, and the "
                    "next ingest marks it so",
                    report.run_id,
                    status,
                    unrecorded.orig or unrecorded,
                )
            raise
        return report

    def _bar(self, items: Iterable[T], unit: str, report: IngestReport, progress: bool) -> Iterator[T]:
        """Iterate with a progress bar; embed whenever a batch of chunks is waiting."""
        total = len(items) if isinstance(items, Sized) else None
        bar = tqdm(items, total=total, desc="ingest", unit=unit, disable=not progress, dynamic_ncols=True)
        for item in bar:
            yield item
            if self._pending_unembedded(report) >= EMBED_BATCH:
                self._embed_pending(report)
            rate = report.chunks_embedded / max(time.monotonic() - self._started, 1e-9)
            bar.set_postfix_str(f"{report.chunks_added} chunks, {rate:.1f} chunks/s embedded", refresh=False)
        bar.close()

    # -- one file ---------------------------------------------------------------------------------

    def _ingest_file(self, path: Path, known: dict[str, str], report: IngestReport) -> None:
        source = str(path)
        report.files_seen += 1
        try:
            stat = path.stat()
            data = read_bytes(path, self.max_bytes)
            digest = hashlib.sha256(data).hexdigest()
            if known.get(source) == digest:
                report.unchanged += 1
                return
            document = parse(path, data, self.limits)
            chunks = self.chunker.chunk(document)
            if not chunks:
                raise ParseError("no text to index")
        except ParseError as exc:
            report.problems.append(FileProblem(source, str(exc)))
            return
        except Exception as exc:  # a parser bug or an OS error must not end the run: record and go on
            report.problems.append(FileProblem(source, f"unexpected error: {type(exc).__name__}: {exc}"))
            return
        self._store(document, chunks, digest, stat.st_size, stat.st_mtime, known, report)

    def _store(
        self,
        document: Document,
        chunks: list[Chunk],
        digest: str,
        size: int,
        mtime: float,
        known: dict[str, str],
        report: IngestReport,
    ) -> None:
        source = document.source
        old_ids = self.store.replace_document(document, digest, size, mtime, chunks)
        self.index.remove(old_ids)
        report.chunks_removed += len(old_ids)
        report.chunks_added += len(chunks)
        if source in known:
            report.updated += 1
        else:
            report.added += 1
        known[source] = digest
        report.warnings.extend(FileProblem(source, w) for w in document.warnings)

    def _remove_vanished(self, roots: Sequence[Path], seen: set[str], report: IngestReport) -> None:
        prefixes = tuple(str(r) + os.sep for r in roots if r.is_dir())
        vanished = [
            source
            for source in self.store.documents_by_source()
            if source not in seen and source.startswith(prefixes) and not os.path.exists(source)
        ]
        self._delete(vanished, report)

    def _delete(self, sources: list[str], report: IngestReport) -> None:
        """Remove stored documents (by source) from SQL and the vector index, and count them."""
        if not sources:
            return
        ids = self.store.delete_documents(sources)
        self.index.remove(ids)
        report.removed += len(sources)
        report.chunks_removed += len(ids)

    # -- embedding --------------------------------------------------------------------------------

    def _pending_unembedded(self, report: IngestReport) -> int:
        return report.chunks_added - report.chunks_embedded

    def _embed_pending(self, report: IngestReport, progress: bool = False) -> None:
        """Embed every chunk not yet in the index, oldest first; save the index now and then."""
        bar = None
        if progress:
            total = self.store.count_pending(after_id=self._embedded_up_to)
            if total > 0:
                bar = tqdm(total=total, desc="embed", unit="chunk", dynamic_ncols=True)
        for batch in self.store.pending_chunks(after_id=self._embedded_up_to, batch=EMBED_BATCH):
            ids = [chunk_id for chunk_id, _ in batch]
            # Identical texts (copied files, boilerplate, a re-added document) are embedded once.
            unique = {text: n for n, text in enumerate(dict.fromkeys(text for _, text in batch))}
            vectors = self.embedder.embed(list(unique))[[unique[text] for _, text in batch]]
            self.index.add(ids, vectors)
            self._embedded_up_to = ids[-1]
            report.chunks_embedded += len(ids)
            if bar is not None:
                bar.update(len(ids))
            if time.monotonic() - self._last_save > SAVE_EVERY_S:
                self.index.save()
                self._last_save = time.monotonic()
        if bar is not None:
            bar.close()

    # -- run bookkeeping --------------------------------------------------------------------------

    def _start_run(self, paths: list[str]) -> int:
        with self.store.session() as s:
            # We hold the workspace lock: a run still marked running was killed.
            s.execute(update(IngestRun).where(IngestRun.status == "running").values(status="interrupted"))
            run = IngestRun(paths=paths)
            s.add(run)
            s.commit()
            return run.id

    def _finish_run(self, report: IngestReport, status: str) -> None:
        """Record how the run ended. A run that did not complete waits at most 2 s for the database's write
        lock (not the usual 30): Ctrl-C must end the command promptly, and a run left `running` without the
        ingest lock is reported as interrupted anyway (`App.status`, `ragapp doctor`)."""
        wait = None if status == "completed" else 2.0
        with self.store.session(lock_wait=wait) as s:
            run = s.get(IngestRun, report.run_id)
            if run is None:
                return
            run.status = status
            run.finished_at = utcnow()
            run.seconds = report.seconds
            for name in ("files_seen", "added", "updated", "unchanged", "removed", "chunks_added"):
                setattr(run, name, getattr(report, name))
            run.failed = len(report.problems)
            for severity, problems in (("error", report.problems), ("warning", report.warnings)):
                s.add_all(
                    IngestProblem(run_id=run.id, source=p.source, severity=severity, reason=p.reason) for p in problems
                )
            s.commit()


def _interrupted(exc: BaseException | None) -> bool:
    """Whether a Ctrl-C is behind `exc`, also when cleaning up after it raised something else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
