"""Parsing risky formats (PDF, .docx, HTML) in a worker process, so one file can never take down ours.

A 292 KB .docx can unpack to gigabytes and a 7 KB PDF can ask for minutes of work; `ragapp serve`
ingests uploads in the server process itself. The parsers check what they can up front
(`ParseLimits.expanded_bytes`, `.elements`); what they cannot foresee is bounded here: the worker's
address space is capped (`resource.setrlimit(RLIMIT_AS)`, set in the worker) and its wall time is
enforced from outside (the worker is killed). Either way the file is reported with the reason, the
worker is started afresh for the next file, and the ingest goes on.

Why a fresh interpreter (`subprocess` + exec) rather than `multiprocessing`: the parent may hold torch's
threads and locks, which a forked child would inherit mid-state, and requests and replies are JSON on
pipes, so nothing is ever unpickled. Why one persistent worker: starting Python with lxml, pypdf and
python-docx imported takes about half a second, too much per file.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any

from ragapp.connectors.base import Document, ParseError, ParseLimits, Section, human_size

import ragapp

try:
    import resource
except ImportError:  # not on Windows: the worker then runs without a memory cap, still with the time limit
    resource = None  # type: ignore[assignment]

_READY = b"ragapp-parser-ready\n"
_START_SECONDS = 120.0  # importing the parsers on a busy machine; not a per-file limit
# The folder holding the `ragapp` package this process imported, so the worker imports the same code.
_ROOT = str(Path(ragapp.__file__).resolve().parent.parent)
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from ragapp.connectors.sandbox import serve; serve()"


def memory_reason(limits: ParseLimits) -> str:
    return (
        f"parse needed more than {human_size(limits.memory_bytes)} of memory, the memory limit "
        "(ingest.max_parse_memory_mb); the parser was stopped"
    )


def time_reason(limits: ParseLimits) -> str:
    return (
        f"parse took longer than {limits.seconds:g} s, the time limit (ingest.max_parse_seconds); "
        "the parser was stopped"
    )


# --- the parent's side --------------------------------------------------------------------------


class _Worker:
    """One parser process, started on first use and again after it was stopped; one file at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self.last_maxrss_kb = 0  # the worker's peak resident memory after the last file it finished

    def parse(self, source: str, data: bytes, limits: ParseLimits) -> Document:
        with self._lock:
            try:
                reply = self._exchange(source, data, limits)
            except BaseException:  # Ctrl-C, a bad reply...: its answer would come to the next file
                self._kill()
                raise
            self.last_maxrss_kb = int(reply.get("maxrss_kb") or 0)
        if "document" in reply:
            return _document_from_json(reply["document"])
        if reply.get("memory"):
            raise ParseError(memory_reason(limits))
        raise ParseError(str(reply.get("error") or "could not parse"))

    def forget(self) -> None:
        """In a forked child: drop the parent's worker without touching it (and a lock held at the fork)."""
        self._lock = threading.Lock()
        self._process = None

    def stop(self) -> None:
        """Stop the worker (it is started again on the next file)."""
        with self._lock:
            self._kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def _exchange(self, source: str, data: bytes, limits: ParseLimits) -> dict[str, Any]:
        header = json.dumps({"source": source, "size": len(data), "limits": dataclasses.asdict(limits)})
        for attempt in (1, 2):
            process = self._running()
            try:
                assert process.stdin is not None
                process.stdin.write(header.encode() + b"\n")
                process.stdin.write(data)
                process.stdin.flush()
                break
            except (BrokenPipeError, OSError):  # it died between files (e.g. recycled): start it once more
                self._kill()
                if attempt == 2:
                    raise ParseError("the parser process could not be started again") from None
        deadline = time.monotonic() + limits.seconds
        line = _read_line(process.stdout, deadline)  # type: ignore[arg-type]
        if line is None:  # out of time: the worker is somewhere inside the parser
            self._kill()
            raise ParseError(time_reason(limits))
        if not line:  # end of file: the worker died
            raise ParseError(self._death(limits))
        reply: dict[str, Any] = json.loads(line)
        if reply.get("recycle"):  # it hit the memory cap or grew large: the next file gets a fresh one
            self._kill()
        return reply

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._kill()
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # the terminal's Ctrl-C goes to the ingest, which stops the worker
        )
        self._process = process
        if _read_line(process.stdout, time.monotonic() + _START_SECONDS) != _READY:  # type: ignore[arg-type]
            self._kill()
            raise ParseError(f"the parser process did not start within {_START_SECONDS:g} s")
        return process

    def _death(self, limits: ParseLimits) -> str:
        """Why the worker ended without replying (it is gone; the next file starts a new one)."""
        code = self._process.wait() if self._process is not None else None
        self._kill()
        if code is None or code >= 0:
            return f"the parser process exited (code {code}) while parsing this file"
        name = signal.Signals(-code).name
        if -code == signal.SIGXCPU:  # its own CPU-time backstop
            return time_reason(limits)
        if -code == signal.SIGKILL:  # not ours: the system's out-of-memory killer, most likely
            return (
                f"the parser process was killed ({name}) while parsing this file, most likely for memory; "
                "set ingest.max_parse_memory_mb below what this machine can spare"
            )
        return f"the parser process crashed ({name}) while parsing this file"

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line from the worker, b"" at end of file, None when the deadline passed first."""
    fd = stream.fileno()
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b""
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(chunks)


_WORKER = _Worker()
atexit.register(_WORKER.stop)
# A forked copy of this process must neither use nor stop our worker: it forgets it and starts its own.
os.register_at_fork(after_in_child=_WORKER.forget)


def parse_isolated(source: str, data: bytes, limits: ParseLimits) -> Document:
    """Parse in the worker process under `limits`; ParseError with the reason when it fails or is stopped."""
    return _WORKER.parse(source, data, limits)


def stop_worker() -> None:
    _WORKER.stop()


def worker_pid() -> int | None:
    """The running worker's process id (tests measure and kill it)."""
    return _WORKER.pid


def worker_maxrss_kb() -> int:
    """The worker's peak resident memory (KB) as it reported after its last finished file."""
    return _WORKER.last_maxrss_kb


def _document_to_json(document: Document) -> dict[str, Any]:
    return dataclasses.asdict(document)


def _document_from_json(fields: dict[str, Any]) -> Document:
    sections = [Section(**section) for section in fields.pop("sections")]
    return Document(**fields, sections=sections)


# --- the worker's side --------------------------------------------------------------------------


def _cap(limits: ParseLimits) -> None:
    """Address space for this file; CPU time as a backstop should the parent be gone and not kill us."""
    if resource is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = limits.memory_bytes if hard == resource.RLIM_INFINITY else min(limits.memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    used = resource.getrusage(resource.RUSAGE_SELF)
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = int(used.ru_utime + used.ru_stime + 2 * limits.seconds + 10)
    if cpu_hard == resource.RLIM_INFINITY or cpu <= cpu_hard:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu_hard))


def _peak_address_space() -> int:
    """VmPeak: the most address space this process ever had, the quantity RLIMIT_AS caps (0 if unknown)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def serve() -> None:
    """The worker's loop: a JSON header line and the file's bytes in; one JSON line out, per file."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a parser's stray print() must not end up inside a reply
    requests = sys.stdin.buffer
    warnings.simplefilter("ignore")
    import bs4  # noqa: F401  imported once here, not on the first file under its time limit
    import docx  # noqa: F401
    import pypdf  # noqa: F401
    from ragapp.connectors.formats import parse_document

    replies.write(_READY)
    replies.flush()
    while header := requests.readline():
        request = json.loads(header)
        data = requests.read(request["size"])
        limits = ParseLimits(**request["limits"])
        _cap(limits)
        memory = False
        fields: dict[str, Any]
        try:
            fields = {"document": _document_to_json(parse_document(request["source"], data, limits))}
        except ParseError as exc:
            fields = {"error": str(exc)}
        except MemoryError:
            fields, memory = {"memory": True}, True
        del data
        # Every file starts below half the cap (else the worker is recycled). lxml and others report a failed
        # allocation as a parse error ("unknown error"), so a file that failed after taking the worker past
        # half its cap is taken to have run out of memory.
        grew = _peak_address_space() > limits.memory_bytes // 2
        if grew and "error" in fields:
            fields, memory = {"memory": True}, True
        fields["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if resource is not None else 0
        recycle = fields["recycle"] = memory or grew
        try:
            line = json.dumps(fields).encode() + b"\n"  # a big text needs memory here too
        except MemoryError:
            line, recycle = b'{"memory": true, "recycle": true}\n', True
        del fields
        replies.write(line)
        replies.flush()
        if recycle:
            return
