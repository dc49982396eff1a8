"""Two `ragapp serve` replicas on one PostgreSQL database, nginx in front: what one replica is told, all know.

Each replica has a workspace folder of its own, as on two machines; documents, chunks, vectors (pgvector),
collections, jobs, keys and conversations are in the shared database. nginx round-robins over both and
says which replica answered in an `X-Upstream` header.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

from ragapp.cli import cli
from ragapp.service.keys import KeyStore
from ragapp.store import Store, lock_key
from tests.servers import Server, serving, stop_group
from tests.support import drop_database, new_database

pytestmark = pytest.mark.slow

NGINX = Path("/usr/sbin/nginx")
CONFIG = "[generation]\nmax_new_tokens = 8\n"  # the same ragapp.toml on both machines
FACT = (
    "# Harbour lights\n\n"
    "The Zephyrine lighthouse on Quillan Skerry is painted ochre. Its lamp is relit every 47 minutes\n"
    "by the keeper, Maud Ellery, who logs each relighting in the brass ledger.\n"
)
QUESTION = "How often is the lamp of the Zephyrine lighthouse relit?"


@dataclass
class Cluster:
    one: Server
    two: Server
    nginx: str  # the balancer's base URL
    key: str  # an admin key, created against the shared database after both replicas had started
    workspaces: tuple[Path, Path]
    url: str  # the database

    def client(self, url: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.key}"}, timeout=180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_config(folder: Path, port: int, upstreams: list[str]) -> str:
    servers = "\n".join(f"        server {u.removeprefix('http://')};" for u in upstreams)
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private temporary folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr';
    access_log {folder / "access.log"} upstream;
{temp}
    upstream ragapp {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 2m;
        location / {{
            proxy_pass http://ragapp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def start_nginx(folder: Path, upstreams: list[str], stack: ExitStack) -> str:
    folder.mkdir()
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(nginx_config(folder, port, upstreams), encoding="utf-8")
    process = subprocess.Popen(
        [str(NGINX), "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    stack.callback(stop_group, process, 10)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log = folder / "error.log"
            raise AssertionError(f"nginx did not start:\n{log.read_text() if log.exists() else '(no log)'}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: Any) -> Iterator[Cluster]:
    if not NGINX.exists():
        pytest.skip(f"{NGINX} is missing: install the Debian package nginx (make system-packages does, as root)")
    root = tmp_path_factory.mktemp("replicas")
    url = new_database(postgres_server)
    env = {"RAGAPP_DATABASE_URL": url}
    workspaces = (root / "machine-1" / "ws", root / "machine-2" / "ws")
    for ws in workspaces:
        ws.mkdir(parents=True)
        (ws / "ragapp.toml").write_text(CONFIG, encoding="utf-8")
    try:
        with ExitStack() as stack:
            # Both start at once (each imports torch, and the first creates the schema): half the wait.
            with ThreadPoolExecutor(2) as pool:
                starting = [pool.submit(stack.enter_context, serving(ws, env=env)) for ws in workspaces]
                one, two = (f.result() for f in starting)
            balancer = start_nginx(root / "nginx", [one.url, two.url], stack)
            # An operator's machine: its own folder, the same database; the replicas are already running.
            # (The operator's CLI runs in this process: only the replicas need processes of their own.)
            args = ["--workspace", str(root / "ops"), "--database-url", url, "keys", "create", "--admin"]
            created = CliRunner().invoke(cli, [*args, "--name", "ops", "--json"])
            assert created.exit_code == 0, created.output
            key = json.loads(created.stdout)["key"]
            yield Cluster(one, two, balancer, key, workspaces, url)
    finally:
        drop_database(postgres_server, url)


def last_error(server: Server, since: int) -> str:
    """The traceback a replica logged after byte `since` of its log: its frames in ragapp's code, and the error.
    The server writes it just after the 500 has gone out, so wait a moment for it."""
    deadline = time.monotonic() + 10
    while True:
        log = server.log.read_bytes()[since:].decode("utf-8", errors="replace")
        lines = log[log.rfind("Traceback (most recent call last)") :].splitlines()
        errors = [n for n, line in enumerate(lines) if re.match(r"[A-Za-z_][\w.]*: ", line)]  # "module.Error: why"
        if (lines and errors) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ours = [
        f"{line}\n{lines[n + 1]}"
        for n, line in enumerate(lines[:-1])
        if line.lstrip().startswith("File ") and "site-packages" not in line
    ]
    return "\n".join([*lines[:1], *ours, "  ...", *lines[errors[-1] if errors else -8 :]]) or "(nothing in the log)"


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def upload(client: httpx.Client, name: str, text: str) -> dict[str, Any]:
    """Upload one Markdown file into `default`, wait for its ingest job; the finished job."""
    accepted = client.post(
        "/v1/collections/default/documents", files=[("files", (name, text.encode(), "text/markdown"))]
    )
    assert accepted.status_code == 202, accepted.text
    return wait_for_job(client, accepted.json()["id"])


def assert_ingested(job: dict[str, Any], name: str) -> None:
    assert job["status"] == "completed", job
    assert job["report"]["added"] == 1 and [d["name"] for d in job["report"]["documents"]] == [name], job


def search(client: httpx.Client, query: str, mode: str = "hybrid") -> httpx.Response:
    response = client.post("/v1/search", json={"query": query, "k": 3, "mode": mode})
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def uploaded(cluster: Cluster) -> dict[str, Any]:
    """lighthouse.md, uploaded through replica 1 and ingested there (the job polled on replica 1)."""
    with cluster.client(cluster.one.url) as one:
        job = upload(one, "lighthouse.md", FACT)
    assert_ingested(job, "lighthouse.md")
    assert (cluster.workspaces[0] / "uploads" / "lighthouse.md").is_file()
    assert not (cluster.workspaces[1] / "uploads").exists()  # the file itself stays on machine 1
    return job


def test_keys_in_the_shared_database_hold_on_every_replica(cluster: Cluster) -> None:
    for server in (cluster.one, cluster.two):
        with server.client() as anonymous:
            assert anonymous.get("/v1/collections").status_code == 401  # a key exists now: every replica asks
        with cluster.client(server.url) as keyed:
            assert keyed.get("/v1/collections").status_code == 200
    store = Store(cluster.url, create=False)
    try:
        keys = KeyStore(store)
        secret, reader = keys.create(["default"], name="bot")
        for server in (cluster.one, cluster.two):
            with server.client(secret) as bot:
                assert bot.get("/v1/collections").status_code == 200
        assert keys.revoke(reader.id)
        for server in (cluster.one, cluster.two):  # revoked once, refused everywhere at once
            with server.client(secret) as bot:
                assert bot.get("/v1/collections").status_code == 401
    finally:
        store.close()


def test_an_upload_to_one_replica_is_answered_by_the_other(cluster: Cluster, uploaded: dict[str, Any]) -> None:
    with cluster.client(cluster.two.url) as two:
        documents = two.get("/v1/collections/default/documents").json()["documents"]
        assert "lighthouse.md" in [Path(d["source"]).name for d in documents]
        for mode in ("hybrid", "dense", "bm25"):  # pgvector in SQL; replica 2 builds its keyword index from SQL
            hits = search(two, QUESTION, mode).json()["hits"]
            assert hits and "every 47 minutes" in hits[0]["text"], (mode, hits)
        chat = two.post(
            "/v1/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8},
        )
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert any(Path(c["source"]).name == "lighthouse.md" and "47 minutes" in c["text"] for c in body["citations"])
    with cluster.client(cluster.one.url) as one:  # the conversation is in the shared database: replica 1 has it
        turns = one.get(f"/v1/conversations/{body['conversation_id']}").json()["turns"]
        assert [t["question"] for t in turns] == [QUESTION]


def test_nginx_spreads_requests_over_both_replicas(cluster: Cluster, uploaded: dict[str, Any]) -> None:
    served = []
    with cluster.client(cluster.nginx) as balancer:
        for _ in range(6):
            response = search(balancer, QUESTION)
            assert "every 47 minutes" in response.json()["hits"][0]["text"]
            served.append(response.headers["x-upstream"])
    assert set(served) == {cluster.one.url.removeprefix("http://"), cluster.two.url.removeprefix("http://")}, served


def test_a_document_removed_through_one_replica_is_gone_from_the_other(
    cluster: Cluster, uploaded: dict[str, Any]
) -> None:
    with cluster.client(cluster.one.url) as one, cluster.client(cluster.two.url) as two:
        job = upload(one, "tides.md", "# Tides\n\nThe Quillan ferry waits for the marrowtide before it sails.\n")
        assert_ingested(job, "tides.md")
        for mode in ("dense", "bm25"):
            assert "marrowtide" in search(one, "when does the Quillan ferry sail", mode).json()["hits"][0]["text"]
        document = job["report"]["documents"][0]
        removed = two.delete(f"/v1/collections/default/documents/{document['id']}")
        assert removed.json() == {"removed": 1, "chunks_removed": document["chunks"]}, removed.text
        for mode in ("dense", "bm25"):  # replica 1's keyword index was built before the removal: it must follow
            hits = search(one, "when does the Quillan ferry sail marrowtide", mode).json()["hits"]
            assert all("marrowtide" not in h["text"] for h in hits), (mode, hits)
        documents = one.get("/v1/collections/default/documents").json()["documents"]
        assert "tides.md" not in [Path(d["source"]).name for d in documents]


def test_uploads_are_ingested_by_the_replica_that_received_them(cluster: Cluster, uploaded: dict[str, Any]) -> None:
    """Two uploads to replica 1 while an ingest elsewhere holds the database-wide lock (an operator's
    `ragapp ingest`, say): the second job waits in the queue, long enough for replica 2's worker to look."""
    engine = create_engine(cluster.url)
    try:
        with engine.connect() as holder, cluster.client(cluster.one.url) as one:
            assert holder.scalar(select(func.pg_try_advisory_lock(lock_key("ingest:"))))
            holder.commit()
            accepted = []
            for name in ("gulls.md", "buoys.md"):
                text = f"# {name}\n\nThe {name.removesuffix('.md')} of Quillan Skerry are counted each spring.\n"
                response = one.post(
                    "/v1/collections/default/documents", files=[("files", (name, text.encode(), "text/markdown"))]
                )
                assert response.status_code == 202, response.text
                accepted.append(response.json()["id"])
            time.sleep(6)  # replica 2's idle worker looks for queued jobs every 5 s
            held = [one.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in accepted]
            assert held[0] == "running", f"the first job did not wait for the ingest lock: {held}"
            holder.scalar(select(func.pg_advisory_unlock(lock_key("ingest:"))))
            holder.commit()
            jobs = [wait_for_job(one, job_id) for job_id in accepted]
    finally:
        engine.dispose()
    for job, name in zip(jobs, ("gulls.md", "buoys.md"), strict=True):
        if job["status"] == "failed" or not job["report"].get("added"):
            pytest.fail(
                f"job {job['id']} for {name} was uploaded to replica 1 but not ingested there: a replica without "
                f"its staged files ran it (each must run only the jobs it received, Jobs._next in "
                f"ragapp/service/jobs.py): {job}"
            )
        assert_ingested(job, name)
    assert {"buoys.md", "gulls.md"} <= {p.name for p in (cluster.workspaces[0] / "uploads").iterdir()}
    assert not list((cluster.workspaces[0] / ".staging").iterdir())


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: an upload's document is keyed by the receiving replica's own path "
    "(WORKSPACE/uploads/NAME), so the same name through another replica is a second document",
)
def test_the_same_name_uploaded_through_another_replica_replaces_the_document(
    cluster: Cluster, uploaded: dict[str, Any]
) -> None:
    with cluster.client(cluster.one.url) as one, cluster.client(cluster.two.url) as two:
        assert_ingested(upload(one, "notice.md", "# Notice\n\nThe Quillan quay is closed on Tuesdays.\n"), "notice.md")
        again = upload(two, "notice.md", "# Notice\n\nThe Quillan quay is now closed on Thursdays.\n")
        assert again["status"] == "completed", again
        notices = [
            d
            for d in one.get("/v1/collections/default/documents").json()["documents"]
            if Path(d["source"]).name == "notice.md"
        ]
        hits = search(one, "Quillan quay closed", "bm25").json()["hits"]
    if len(notices) != 1:
        pytest.fail(
            "ragapp bug: uploading notice.md again through the other replica added a second document instead of "
            "replacing it; both versions are searched. An upload's document is keyed by the receiving machine's "
            "path (ragapp/service/jobs.py Jobs._run ingests <its workspace>/uploads/<name>): "
            + ", ".join(f"id {d['id']} {d['source']}" for d in notices)
        )
    assert all("Tuesdays" not in h["text"] for h in hits), hits


def test_a_collection_made_through_one_replica_serves_on_the_other(cluster: Cluster) -> None:
    with cluster.client(cluster.one.url) as one, cluster.client(cluster.two.url) as two:
        logged = cluster.one.log.stat().st_size
        created = one.post("/v1/collections", json={"name": "harbour"})
        if created.status_code == 500:
            error = last_error(cluster.one, logged)
            pytest.fail(f"ragapp bug: POST /v1/collections answered 500 on PostgreSQL:\n{error}")
        assert created.status_code == 201, created.text
        assert "harbour" in [c["name"] for c in two.get("/v1/collections").json()["collections"]]
        files = [
            ("files", ("cranes.md", b"# Cranes\n\nCrane C-9 on the Quillan quay lifts 40 tonnes.\n", "text/markdown"))
        ]
        accepted = one.post("/v1/collections/harbour/documents", files=files)
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(two, accepted.json()["id"])  # polled on the other replica
        assert_ingested(job, "cranes.md")
        hits = two.post("/v1/search", json={"query": "how much does crane C-9 lift", "collection": "harbour"})
        assert hits.status_code == 200, hits.text
        assert "40 tonnes" in hits.json()["hits"][0]["text"]
        assert all("lighthouse" not in h["text"].lower() for h in hits.json()["hits"])  # nothing from default
