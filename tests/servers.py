"""`ragapp serve` as a user starts it: a subprocess on 127.0.0.1, a free port, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import DocsWorkspaces, default_sigint

RAGAPP = [sys.executable, "-m", "ragapp"]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def client(self, key: str | None = None, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def ragapp(workspace: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*RAGAPP, "--workspace", str(workspace), *args],
        check=False,  # callers read the return code and stderr
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def docs_workspace(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, config: str) -> Path:
    """A workspace with ragapp's docs ingested, for a server: a copy of the session's one ingest
    (tests.support.DocsWorkspaces), on SQLite, with `config` as its ragapp.toml (generation and server
    settings; the ingest used the defaults)."""
    ws = DocsWorkspaces.of(tmp_path_factory).copy(tmp_path_factory.mktemp("served") / "ws", request).folder
    (ws / "ragapp.toml").write_text(config, encoding="utf-8")
    return ws


@contextmanager
def serving(workspace: Path, *args: str, env: dict[str, str] | None = None, startup: float = 120) -> Iterator[Server]:
    """A running server over `workspace` (extra `args` go to `ragapp serve`); healthy when yielded."""
    log = workspace.parent / f"serve-{workspace.name}-{time.monotonic_ns()}.log"
    out = log.open("w")
    process = subprocess.Popen(
        [*RAGAPP, "--workspace", str(workspace), "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=out,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        preexec_fn=default_sigint,  # noqa: PLW1509 - it only resets a signal handler; nothing that a thread could hold
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if not found:
            process.wait(10)
            raise AssertionError(f"ragapp serve did not start: {line!r}\n{log.read_text()}")
        url = found.group(1)
        deadline = time.monotonic() + startup
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ragapp serve never became healthy:\n{log.read_text()}")
            time.sleep(0.2)
        yield Server(url, process, log)
    finally:
        stop_group(process, grace=30)
        out.close()


def stop_group(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM to a child started with start_new_session and its children; SIGKILL after `grace` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (children first found by parent id)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def assert_attribution(body: dict[str, Any], answer: str) -> None:
    """What every answer of the API keeps (`body`: a /v1/query or chat completion response, or a stream's
    last chunk; `answer`: its text): a passage is `cited` exactly when some sentence cites it; each quote
    is a span of the text of its sentence's best citation; an abstained answer cites nothing."""
    citations = {c["n"]: c for c in body["citations"]}
    sentences = body["sentences"]
    assert isinstance(body["abstained"], bool)
    cited = {n for s in sentences for n in s["citations"]}
    assert cited <= set(citations), (cited, list(citations))
    assert {n for n, c in citations.items() if c["cited"]} == cited
    for sentence in sentences:
        assert set(sentence) == {"text", "citations", "support", "quote"}
        assert sentence["text"].strip() and sentence["text"] in answer, (sentence["text"], answer)
        assert 0 <= sentence["support"] <= 1
        quote = sentence["quote"]
        assert (quote is None) == (not sentence["citations"]), sentence
        if quote is not None:
            best = citations[sentence["citations"][0]]
            assert quote["chunk_id"] == best["chunk_id"]
            assert 0 <= quote["start"] < quote["end"] <= len(best["text"])
            assert best["text"][quote["start"] : quote["end"]].strip()
    if body["abstained"]:
        assert sentences == [] and cited == set()  # `citations` are the closest passages, none cited
