"""A served workspace under stress (issue 21): the CLI working on it while it serves, and SIGKILLs at bad moments.

Real parts throughout: `ragapp serve` and the CLI as subprocesses, real HTTP on 127.0.0.1, the shipped
models (one passage per prompt, not four, and 8 new tokens: the kill-9 test took 115 s, not 146 s), the
workspace's SQLite file. SQLite only: that file is what broke (a CLI command dropped the server's SQLite
locks, and the next process to close deleted the WAL under it).

Each test prints its figures (requests per route, 5xx, uploads accepted and ingested, CLI commands,
kill points): run with `-s` to see them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from click.testing import CliRunner

from ragapp import App
from ragapp.cli import cli
from ragapp.service.keys import KeyStore
from tests.servers import Server, ragapp, serving
from tests.support import DOCS

pytestmark = pytest.mark.slow

CORPUS = ["ingesting.md", "server.md", "workspace.md"]
CONFIG = """[retrieval]
k = 1

[generation]
max_new_tokens = 8

[server]
queue_size = 64
history_turns = 2
"""
UPLOAD = "/v1/collections/default/documents"
QUESTIONS = [
    "How do I remove documents whose files were deleted?",
    "And how do I see what it removed?",
    "Which port does the server listen on?",
]
_numbers = itertools.count(1)  # unique upload / turn numbers for the whole module


def marker(n: int) -> str:
    """A word no document holds but upload `n`, so a BM25 search finds exactly that file."""
    return "zqmark" + "".join(chr(ord("a") + int(d)) for d in f"{n:05d}")


def prose(paragraphs: int, seed: int) -> str:
    """Real text (ragapp's docs) so uploads chunk and embed like real files."""
    pool = [p for name in CORPUS for p in (DOCS / name).read_text(encoding="utf-8").split("\n\n") if len(p) > 80]
    rng = random.Random(seed)
    return "\n\n".join(rng.choice(pool) for _ in range(paragraphs))


def upload_file(paragraphs: int = 6) -> tuple[str, str, bytes]:
    """(name, its marker word, content) of a new Markdown file."""
    n = next(_numbers)
    word = marker(n)
    text = f"# Upload {n}\n\nThe code word of this file is {word}.\n\n{prose(paragraphs, n)}\n\nAgain: {word}.\n"
    return f"upload-{n:05d}.md", word, text.encode("utf-8")


@dataclass
class Ledger:
    """What the clients sent and were told: requests by route, 5xx and transport errors, accepted uploads
    (answered 202) and conversation turns (answered 200). Shared by client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    uploads: dict[str, tuple[str, str]] = field(default_factory=dict)  # job id -> (file name, marker)
    turns: list[tuple[str, str]] = field(default_factory=list)  # (conversation id, question)

    def request(self, client: httpx.Client, method: str, path: str, route: str, **kwargs: Any) -> httpx.Response | None:
        with self.lock:
            self.sent[route] += 1
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            with self.lock:
                self.transport_errors.append(f"{route}: {type(exc).__name__}: {exc}")
            return None
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{route}: {response.status_code} {response.text[:300]}")
        return response

    def upload(self, client: httpx.Client, paragraphs: int = 6) -> str | None:
        """Upload one new file; its job id if accepted (202)."""
        name, word, data = upload_file(paragraphs)
        response = self.request(client, "POST", UPLOAD, "upload", files=[("files", (name, data, "text/markdown"))])
        if response is None or response.status_code != 202:
            return None
        job_id = str(response.json()["id"])
        with self.lock:
            self.uploads[job_id] = (name, word)
        return job_id

    def turn(self, client: httpx.Client, question: str, conversation_id: str | None, chat: bool) -> str | None:
        """One answered turn (through /v1/query or /v1/chat/completions); its conversation id on 200."""
        if chat:
            body: dict[str, Any] = {
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 8,
                "conversation_id": conversation_id,
            }
            response = self.request(client, "POST", "/v1/chat/completions", "chat", json=body)
        else:
            body = {"question": question, "conversation_id": conversation_id, "max_tokens": 8, "k": 3}
            response = self.request(client, "POST", "/v1/query", "query", json=body)
        if response is None or response.status_code != 200:
            return None
        cid = str(response.json()["conversation_id"])
        with self.lock:
            self.turns.append((cid, question))
        return cid

    def accepted_upload(self, client: httpx.Client, tries: int = 20) -> str:
        """An upload answered 202 (one the kill of the round before cut off is retried); its job id."""
        for _ in range(tries):
            job_id = self.upload(client)
            if job_id is not None:
                return job_id
        raise AssertionError(f"no upload was accepted in {tries} tries")

    def first_turn(self, client: httpx.Client, tries: int = 20) -> str:
        """A new conversation with one answered turn (a request the kill of the round before cut off is retried)."""
        for _ in range(tries):
            cid = self.turn(client, f"{QUESTIONS[0]} (turn {next(_numbers)})", None, chat=False)
            if cid is not None:
                return cid
        raise AssertionError(f"no conversation could be started in {tries} tries")

    def conversation(self, client: httpx.Client, turns: int = 3) -> str | None:
        """A conversation of `turns` turns (query and chat alternating); stops at the first that fails."""
        cid = None
        for i in range(turns):
            question = f"{QUESTIONS[i % len(QUESTIONS)]} (turn {next(_numbers)})"
            cid = self.turn(client, question, cid, chat=i % 2 == 1)
            if cid is None:
                break
        return cid

    def accepted_turns(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for cid, question in self.turns:
            out.setdefault(cid, []).append(question)
        return out


def wait_for_jobs(client: httpx.Client, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The jobs once all are completed or failed (or as they are at `timeout`)."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    for job_id in job_ids:
        while True:
            response = client.get(f"/v1/jobs/{job_id}")
            ok = response.status_code == 200
            found[job_id] = response.json() if ok else {"status": f"HTTP {response.status_code}"}
            if found[job_id].get("status") in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    return found


def lost_uploads(client: httpx.Client, ledger: Ledger, timeout: float = 180) -> tuple[list[str], Counter[str]]:
    """Accepted uploads that were not ingested: the job is not completed, or the document is not listed, or
    its marker word does not find it. Also the jobs' final statuses."""
    jobs = wait_for_jobs(client, list(ledger.uploads), timeout)
    listed = {Path(d["source"]).name for d in client.get(UPLOAD).json()["documents"]}
    files = client.get("/v1/collections/default/uploads")  # each uploaded file: ingested, pending or failed
    upload_status = {u["name"]: u["status"] for u in files.json()["uploads"]} if files.status_code == 200 else {}
    problems = []
    for job_id, (name, word) in ledger.uploads.items():
        job = jobs[job_id]
        # Every upload here is a valid Markdown file: a failed job is a loss too (with its reason shown).
        if job.get("status") != "completed":
            problems.append(f"{name} (job {job_id}): {job.get('status')} {job.get('error') or ''}".strip())
        elif name not in listed:
            problems.append(f"{name} (job {job_id}): completed but not among the documents")
        elif upload_status and upload_status.get(name) != "ingested":
            problems.append(f"{name} (job {job_id}): completed but GET .../uploads says {upload_status.get(name)}")
        else:
            hits = client.post("/v1/search", json={"query": word, "k": 1, "mode": "bm25"}).json()["hits"]
            if not hits or Path(hits[0]["source"]).name != name:
                problems.append(f"{name} (job {job_id}): listed but a search for {word!r} does not find it")
    return problems, Counter(str(j.get("status")) for j in jobs.values())


def lost_turns(client: httpx.Client, ledger: Ledger) -> list[str]:
    """Turns answered 200 that are not in their conversation as read back."""
    problems = []
    for cid, questions in ledger.accepted_turns().items():
        response = client.get(f"/v1/conversations/{cid}")
        if response.status_code != 200:
            problems.append(f"conversation {cid}: HTTP {response.status_code} {response.text[:200]}")
            continue
        stored = Counter(t["question"] for t in response.json()["turns"])
        missing = Counter(questions) - stored
        if missing:
            problems.append(f"conversation {cid}: turns answered 200 but not stored: {sorted(missing)}")
    return problems


def integrity(ws: Path) -> str:
    """`PRAGMA integrity_check` of the workspace's database ('ok' when sound)."""
    connection = sqlite3.connect(ws / "ragapp.db", timeout=30)
    try:
        return "; ".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


def doctor(ws: Path) -> list[str]:
    """`ragapp doctor`'s findings that are not ok ("level check: message"); it also checks that the
    indexes agree with SQL. Raises if it finds an error (it exits 1). Run in-process: the server has stopped."""
    result = CliRunner().invoke(cli, ["--workspace", str(ws), "doctor", "--json"])
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    findings = [f"{f['level']} {f['check']}: {f['message']}" for f in report.get("findings", []) if f["level"] != "ok"]
    assert result.exit_code == 0 and report.get("ok"), f"ragapp doctor: {findings or result.output[-500:]}"
    return findings


def kill_hard(server: Server) -> None:
    """SIGKILL to the server and everything it started, as the OOM killer or a power cut would."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(30)


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small ingested workspace with an admin key (the CLI loop creates keys, which makes keys required);
    each test serves a copy of it, so the corpus is embedded once."""
    if not all((DOCS / name).exists() for name in CORPUS):
        pytest.skip(f"the corpus {CORPUS} is not in {DOCS}")
    ws = tmp_path_factory.mktemp("reliability") / "base"
    ws.mkdir()
    (ws / "ragapp.toml").write_text(CONFIG, encoding="utf-8")
    with App(ws) as app:
        app.ingest([DOCS / name for name in CORPUS])
        secret, _ = KeyStore(app.open_store(create=True)).create(admin=True, name="tests")
    return ws, secret


def copy_workspace(base: Path, to: Path) -> Path:
    shutil.copytree(base, to)
    return to


# -- defect 1: the CLI on a served workspace ---------------------------------------------------------


def test_served_workspace_survives_the_cli_under_traffic(base_workspace: tuple[Path, str], tmp_path: Path) -> None:
    """`ragapp serve` under steady traffic (search, query, chat conversations, uploads) while `status`,
    `keys create/revoke` and `ingest` run on the same workspace in a loop: no 5xx, nothing accepted is lost."""
    base, key = base_workspace
    ws = copy_workspace(base, tmp_path / "ws")
    folder = tmp_path / "cli-folder"
    folder.mkdir()
    duration = 20.0  # long enough for every CLI command to run against live traffic at least once
    ledger = Ledger()
    cli: Counter[str] = Counter()
    cli_failures: list[str] = []
    cli_markers: dict[str, str] = {}  # file name -> marker, ingested by `ragapp ingest`
    wal_missing: list[float] = []
    read_back_failures: list[str] = []

    with serving(ws) as server:
        started = time.monotonic()
        deadline = started + duration
        done = threading.Event()

        def searches(seed: int) -> None:
            rng = random.Random(seed)
            with server.client(key) as c:
                while time.monotonic() < deadline:
                    query = rng.choice(["remove deleted files", "server port", "workspace folder", "api keys"])
                    mode = rng.choice(["hybrid", "bm25", "dense"])
                    ledger.request(c, "POST", "/v1/search", "search", json={"query": query, "k": 3, "mode": mode})
                    time.sleep(0.05)

        def conversations() -> None:
            with server.client(key) as c:
                while time.monotonic() < deadline:
                    turns_before = len(ledger.turns)
                    cid = ledger.conversation(c, turns=3)
                    if cid is None:
                        time.sleep(0.5)
                        continue
                    answered = [q for c_id, q in ledger.turns[turns_before:] if c_id == cid]
                    response = ledger.request(c, "GET", f"/v1/conversations/{cid}", "conversation")
                    if response is None or response.status_code != 200:
                        read_back_failures.append(f"{cid}: {response.status_code if response else 'no answer'}")
                    elif [t["question"] for t in response.json()["turns"]] != answered:
                        read_back_failures.append(f"{cid}: read back {response.json()['turns']} for {answered}")

        def uploads() -> None:
            with server.client(key) as c:
                while time.monotonic() < deadline:
                    job_id = ledger.upload(c)
                    if job_id is not None:
                        ledger.request(c, "GET", f"/v1/jobs/{job_id}", "job")
                    time.sleep(1.0)

        def cli_admin_loop() -> None:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                run_cli("status", ["status"])
                created = run_cli(
                    "keys create", ["keys", "create", "--collection", "default", "--name", f"cli {n}", "--json"]
                )
                if created is not None:
                    run_cli("keys revoke", ["keys", "revoke", str(json.loads(created)["id"])])
                run_cli("keys list", ["keys", "list"])

        def cli_ingest_loop() -> None:
            while time.monotonic() < deadline:
                name, word, data = upload_file(paragraphs=3)
                cli_name = "cli-" + name
                (folder / cli_name).write_bytes(data)
                if run_cli("ingest", ["ingest", str(folder)]) is not None:
                    cli_markers[cli_name] = word

        def run_cli(label: str, args: list[str]) -> str | None:
            result = ragapp(ws, *args, timeout=180)
            cli[label] += 1
            if result.returncode != 0:
                cli_failures.append(f"ragapp {' '.join(args)}: exit {result.returncode}: {result.stderr[-500:]}")
                return None
            return result.stdout

        def watch_wal() -> None:
            wal = ws / "ragapp.db-wal"
            while not done.is_set():
                if not wal.exists():
                    wal_missing.append(time.monotonic() - started)
                time.sleep(0.01)

        workers: list[Callable[[], None]] = [
            lambda: searches(1),
            lambda: searches(2),
            conversations,
            uploads,
            cli_admin_loop,
            cli_ingest_loop,
            watch_wal,
        ]
        threads = [threading.Thread(target=w, daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads[:-1]:
            t.join(duration + 240)
        done.set()
        threads[-1].join(5)

        with server.client(key) as c:
            lost, job_statuses = lost_uploads(c, ledger)
            missing_turns = lost_turns(c, ledger)
            listed = {Path(d["source"]).name for d in c.get(UPLOAD).json()["documents"]}
            cli_lost = [name for name in cli_markers if name not in listed]
            serves = c.post("/v1/search", json={"query": "remove deleted files", "k": 1}).status_code
    check = integrity(ws)
    findings = doctor(ws)

    print(
        f"\nconcurrent CLI + server, {duration:.0f} s of traffic:"
        f"\n  requests sent by route: {dict(ledger.sent)} (total {sum(ledger.sent.values())})"
        f"\n  statuses: {dict(ledger.statuses)}; 5xx: {len(ledger.server_errors)}; transport errors: "
        f"{len(ledger.transport_errors)}"
        f"\n  uploads accepted (202): {len(ledger.uploads)}; ingested: {len(ledger.uploads) - len(lost)}; "
        f"job statuses: {dict(job_statuses)}"
        f"\n  conversation turns answered 200: {len(ledger.turns)} in {len(ledger.accepted_turns())} conversations; "
        f"lost: {len(missing_turns)}"
        f"\n  CLI commands run: {dict(cli)} (total {sum(cli.values())}); failed: {len(cli_failures)}"
        f"\n  WAL seen missing: {len(wal_missing)} times; integrity_check: {check}; doctor: {findings or 'ok'}"
    )
    assert ledger.server_errors == [], ledger.server_errors[:10]
    assert ledger.transport_errors == [], ledger.transport_errors[:10]
    assert cli_failures == [], cli_failures[:5]
    assert lost == [], lost
    assert missing_turns == [] and read_back_failures == [], (missing_turns, read_back_failures)
    assert cli_lost == [], f"files `ragapp ingest` reported ingested are not listed: {cli_lost}"
    assert not wal_missing, f"ragapp.db-wal vanished under the server at {wal_missing[:5]} s"
    assert check == "ok"
    assert serves == 200
    # The run exercised what it claims to: every kind of traffic got through, and every CLI command ran.
    assert ledger.sent["search"] and ledger.uploads and ledger.turns
    assert {"status", "keys create", "keys revoke", "ingest"} <= set(cli)


# -- the fault-injection suite ------------------------------------------------------------------------


@dataclass
class Background:
    """A few uploads, and conversations, from two threads until stopped (or the server is gone)."""

    server: Server
    key: str
    ledger: Ledger
    stop: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)  # some turn got its 200: models loaded
    threads: list[threading.Thread] = field(default_factory=list)
    uploads: int = 2

    def __enter__(self) -> Self:
        for target in (self._uploads, self._conversations):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _uploads(self) -> None:
        with self.server.client(self.key, timeout=60) as c:
            for _ in range(self.uploads):  # two: every job is an ingest the final restart must finish
                if self.stop.is_set():
                    break
                self.ledger.upload(c, paragraphs=4)
                self.stop.wait(1.0)

    def _conversations(self) -> None:
        with self.server.client(self.key, timeout=120) as c:
            while not self.stop.is_set():
                if self.ledger.conversation(c, turns=3) is not None:
                    self.answered.set()
                else:
                    self.stop.wait(0.2)


def chunk_counts(ws: Path, name: str) -> tuple[int, int]:
    """(chunks, indexed chunks) of the document from upload `name`, as a concurrent reader sees them."""
    connection = sqlite3.connect(f"file:{ws / 'ragapp.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = connection.execute(
            "SELECT count(c.id), coalesce(sum(c.indexed), 0) FROM chunks c JOIN documents d ON c.document_id = d.id "
            "WHERE d.source LIKE ?",
            (f"%/{name}",),
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        connection.close()


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def kill_mid_upload(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
    """Half of a large upload's body sent, then the kill: the client never hears 202."""
    name, _, data = upload_file(paragraphs=400)
    with server.client(key) as c:
        request = c.build_request("POST", UPLOAD, files=[("files", (name, data, "text/markdown"))])
        body = request.read()
        headers = {"Content-Type": request.headers["Content-Type"], "Content-Length": str(len(body))}
        half_sent, killed = threading.Event(), threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            half_sent.set()
            killed.wait(30)
            yield body[len(body) // 2 :]

        outcome: list[httpx.Response | None] = []

        def send() -> None:
            outcome.append(ledger.request(c, "POST", UPLOAD, "upload", content=slow_body(), headers=headers))

        sender = threading.Thread(target=send)
        sender.start()
        half_sent.wait(30)
        time.sleep(0.3)
        kill_hard(server)
        killed.set()
        sender.join(30)
    answered = outcome[0].status_code if outcome and outcome[0] is not None else None
    return f"killed with half of {name} sent (client got {answered or 'no answer'})"


def kill_after_202(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
    with server.client(key) as c:
        job_id = ledger.accepted_upload(c)
        kill_hard(server)
    return f"killed right after job {job_id[:8]}'s 202"


def kill_when_job_running(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
    with server.client(key) as c:
        job_id = ledger.accepted_upload(c)
        seen = wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] != "queued", 120)
        status = c.get(f"/v1/jobs/{job_id}").json()["status"]
        kill_hard(server)
    return f"killed when job {job_id[:8]} was seen {status if seen else 'queued (timeout)'}"


def kill_mid_ingest_write(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
    """A large upload's chunks are in SQL but not all embedded and indexed yet: the kill lands mid-ingest."""
    with server.client(key) as c:
        name, word, data = upload_file(paragraphs=80)  # dozens of chunks: seconds of embedding to land in
        response = ledger.request(c, "POST", UPLOAD, "upload", files=[("files", (name, data, "text/markdown"))])
        assert response is not None and response.status_code == 202, response and response.text
        job_id = str(response.json()["id"])
        with ledger.lock:
            ledger.uploads[job_id] = (name, word)

        def mid_write() -> bool:
            chunks, indexed = chunk_counts(ws, name)
            return (0 < chunks and indexed < chunks) or c.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"

        wait_until(mid_write, 180, every=0.05)
        chunks, indexed = chunk_counts(ws, name)
        kill_hard(server)
    return f"killed with {indexed} of {chunks} chunks of {name} indexed"


def kill_after_turn(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
    with server.client(key) as c:
        cid = ledger.first_turn(c)
        ledger.turn(c, f"{QUESTIONS[1]} (turn {next(_numbers)})", cid, chat=True)
        kill_hard(server)
    return f"killed right after conversation {cid[:8]}'s second turn"


def kill_mid_stream(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
    """A streamed follow-up has sent its first words: the kill lands during generation (before it is stored)."""
    with server.client(key) as c:
        cid = ledger.first_turn(c)
        body = {"messages": [{"role": "user", "content": QUESTIONS[1]}], "conversation_id": cid, "stream": True}
        with ledger.lock:
            ledger.sent["chat stream"] += 1
        try:
            with c.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if '"content": "' in line and '"content": ""' not in line:
                        break
                kill_hard(server)
        except httpx.TransportError:
            pass
        if server.process.poll() is None:
            kill_hard(server)
    return f"killed mid-stream of a follow-up in conversation {cid[:8]}"


def kill_timed(seconds: float) -> Callable[[Server, str, Ledger, Path], str]:
    def kill(server: Server, key: str, ledger: Ledger, ws: Path) -> str:
        time.sleep(seconds)
        kill_hard(server)
        return f"killed {seconds:.1f} s into mixed traffic"

    return kill


def test_kill_9_loses_no_accepted_upload_or_answered_turn(base_workspace: tuple[Path, str], tmp_path: Path) -> None:
    """SIGKILL `ragapp serve` during uploads, ingest jobs and conversation writes (uploads and conversations
    run in the background all along); after each kill the database is sound, and after a restart every
    upload answered 202 is ingested and every turn answered 200 is stored."""
    base, key = base_workspace
    ws = copy_workspace(base, tmp_path / "ws")
    ledger = Ledger()
    kill_points: list[tuple[str, Callable[[Server, str, Ledger, Path], str], bool]] = [
        # (what, how, wait first until a background turn was answered: the models are loaded)
        ("upload mid-request", kill_mid_upload, False),
        ("right after an upload's 202", kill_after_202, False),
        ("ingest job seen running", kill_when_job_running, False),
        ("mid-ingest: chunks in SQL, not all indexed", kill_mid_ingest_write, False),
        ("right after a conversation turn's 200", kill_after_turn, True),
        ("mid-generation of a streamed follow-up", kill_mid_stream, True),
        ("timed, 1.5 s after the first answer", kill_timed(1.5), True),
    ]
    outcomes: list[str] = []
    for what, kill, warm in kill_points:
        started = time.monotonic()
        with serving(ws) as server, Background(server, key, ledger) as background:
            if warm:
                background.answered.wait(180)
            outcome = kill(server, key, ledger, ws)
            assert server.process.poll() is not None
        check = integrity(ws)
        outcomes.append(f"{what}: {outcome}; integrity_check {check} ({time.monotonic() - started:.0f} s)")
        assert check == "ok", outcomes[-1]

    started = time.monotonic()
    with serving(ws) as server, server.client(key) as c:
        lost, job_statuses = lost_uploads(c, ledger)
        restart_s = time.monotonic() - started
        missing_turns = lost_turns(c, ledger)
        serves = [
            c.post("/v1/search", json={"query": "remove deleted files", "k": 2}).status_code,
            c.post("/v1/query", json={"question": QUESTIONS[0], "max_tokens": 8}).status_code,
        ]
        staged_left = [p.name for p in (ws / ".staging").glob("*")] if (ws / ".staging").is_dir() else []
    check = integrity(ws)
    findings = doctor(ws)  # after kills mid-ingest: the vector and keyword indexes agree with SQL

    print(
        f"\nfault injection: kill points tried: {len(kill_points)}"
        + "".join(f"\n  {line}" for line in outcomes)
        + f"\n  requests sent by route: {dict(ledger.sent)}; 5xx: {len(ledger.server_errors)}"
        f"\n  uploads accepted (202): {len(ledger.uploads)}; ingested: {len(ledger.uploads) - len(lost)}; "
        f"job statuses after restart: {dict(job_statuses)} ({restart_s:.0f} s to finish them)"
        f"\n  conversation turns answered 200: {len(ledger.turns)}; lost: {len(missing_turns)}"
        f"\n  staging folders left (uploads never answered 202): {len(staged_left)}"
        f"\n  after the last restart: search/query {serves}, integrity_check {check}, doctor: {findings or 'ok'}"
    )
    assert lost == [], lost
    assert missing_turns == [], missing_turns
    assert serves == [200, 200]
    assert check == "ok"
    assert ledger.server_errors == [], ledger.server_errors[:10]
    assert staged_left == [] or not set(staged_left) & set(ledger.uploads), "an accepted upload is still staged"
    assert ledger.uploads and ledger.turns  # the kills really had accepted work around them
