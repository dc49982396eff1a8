"""The HTTP service in-process: `create_app` driven through Starlette's TestClient, or called as an ASGI app
where a test needs to hang up mid-request. The store, the embedding model and ingestion are real.

Generation is a labelled FAKE (`SlowGenerator`, control flow only): it produces one word at a time, slowly,
counting them, so a test can see whether a generation stopped when its client went away; and it refuses a
prompt over its context window as the real backends do. The real model's answers are covered in
test_service_api.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ragapp import App
from ragapp.generators import GenerationConfig, Message
from ragapp.service.api import Service, create_app
from ragapp.store import TurnRow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("module_database")]

NOTES = {
    "pumps.md": "# Pumps\n\nThe blue pump in hall 7 is serviced every 90 days by the night shift.\n",
    "valves.md": "# Valves\n\nValve V-12 must be closed before the blue pump is opened for service.\n",
}
CONFIG = """[generation]
max_new_tokens = 400

[retrieval]
mode = "bm25"

[server]
history_turns = 50
"""


class SlowGenerator:
    """FAKE generator (control flow only): one word per `delay` seconds, counting them; tokens are words.
    Like the real backends, it raises on a prompt over its context window."""

    model_id = "fake-slow"
    device = "cpu"

    def __init__(self, delay: float = 0.02, context_window: int = 1024):
        self.delay = delay
        self.context_window = context_window
        self.produced = 0
        self.finished = 0  # generations that ran to their end
        self.prompts: list[list[Message]] = []

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def text_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]:
        tokens = self.count_tokens(messages)
        if tokens > self.context_window:
            raise ValueError(f"prompt has {tokens} tokens; the context window of fake-slow is {self.context_window}")
        self.prompts.append(list(messages))
        for n in range(config.max_new_tokens):
            time.sleep(self.delay)
            self.produced += 1
            yield f" w{n}"
        self.finished += 1

    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str:
        return "".join(self.stream(messages, config))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Service, Path]]:
    ws = tmp_path_factory.mktemp("inprocess") / "ws"
    ws.mkdir()
    (ws / "ragapp.toml").write_text(CONFIG, encoding="utf-8")
    notes = ws.parent / "notes"
    notes.mkdir()
    for name, text in NOTES.items():
        (notes / name).write_text(text, encoding="utf-8")
    with App(ws) as app:
        app.ingest([notes])
    api = create_app(ws)
    with TestClient(api, raise_server_exceptions=False) as client:  # runs the lifespan: the job worker too
        yield client, api.state.service, ws


@pytest.fixture
def fake(served: tuple[TestClient, Service, Path]) -> SlowGenerator:
    generator = SlowGenerator()
    served[1].collections.app("default")._generator = generator  # type: ignore[assignment]
    return generator


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == status and body["type"]
    return str(body["message"])


def turns_stored(service: Service) -> int:
    with service.store.session() as s:
        return int(s.scalar(select(func.count()).select_from(TurnRow)) or 0)


async def hang_up_during(api: FastAPI, path: str, body: dict[str, Any], fake: SlowGenerator) -> tuple[int, float]:
    """POST `body` to `path` as an ASGI client that disconnects once the generation has begun:
    (the response status, seconds from hanging up until the request ended)."""
    data = json.dumps(body).encode()
    hung_up = asyncio.Event()
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": data, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    request = asyncio.create_task(api(scope, receive, send))
    while fake.produced < 5:  # generating now
        assert not request.done(), sent
        await asyncio.sleep(0.01)
    hung_up.set()
    mark = time.monotonic()
    await asyncio.wait_for(request, timeout=60)
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), time.monotonic() - mark


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "When is the blue pump serviced?"}]}),
        ("/v1/query", {"question": "When is the blue pump serviced?"}),
    ],
    ids=["chat", "query"],
)
def test_a_non_streamed_answer_stops_when_its_client_hangs_up(
    served: tuple[TestClient, Service, Path], fake: SlowGenerator, path: str, body: dict[str, Any]
) -> None:
    """Defect 10: a non-streaming chat kept generating (400 tokens here, 8 s) after its client had gone."""
    client, service, _ = served
    before = turns_stored(service)
    status, took = asyncio.run(hang_up_during(client.app, path, body, fake))  # type: ignore[arg-type]
    time.sleep(0.3)  # a generation that went on would keep counting
    assert fake.finished == 0 and fake.produced < 100, fake.produced  # stopped, far from its 400 tokens
    assert took < 3 and status == 499
    assert turns_stored(service) == before  # nobody to answer: no turn stored
    assert service.queue.depth == 0
    fake.delay = 0.0  # and the next request is answered in full
    answered = client.post(path, json={**body, "max_tokens": 5})
    assert answered.status_code == 200, answered.text
    assert fake.finished == 1 and turns_stored(service) == before + 1


def test_a_long_history_is_cut_to_the_window_and_a_too_long_question_is_a_400(
    served: tuple[TestClient, Service, Path], fake: SlowGenerator
) -> None:
    """Defect 5: 50 long turns overflowed the window while the follow-up was rewritten: a 500."""
    client = served[0]
    fake.delay = 0.0
    messages = []
    for n in range(50):
        messages.append({"role": "user", "content": f"question {n} " + "about the blue pump " * 20})
        messages.append({"role": "assistant", "content": f"answer {n} " + "it is serviced often " * 20})
    messages.append({"role": "user", "content": "And who does that?"})
    reply = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].strip()
    rewrite = fake.prompts[0][-1]["content"]  # the condense prompt: the newest turns, not the oldest
    assert "question 49 " in rewrite and "question 0 " not in rewrite
    assert all(fake.count_tokens(p) <= fake.context_window for p in fake.prompts)

    too_long = "why is the blue pump serviced " * 300  # 1,800 words for a 1,024-token window
    for history in (messages[:-1], []):
        refused = client.post(
            "/v1/chat/completions", json={"messages": [*history, {"role": "user", "content": too_long}]}
        )
        assert "exceed" in error_of(refused, 400) and "budget" in error_of(refused, 400)


def test_upload_file_names_are_checked(served: tuple[TestClient, Service, Path]) -> None:
    """Defect 10: an empty file name got 422 "Expected UploadFile, received: <class 'str'>"; names with
    bidi overrides or a BOM were accepted."""
    client, _, ws = served
    good = ("files", ("ok.md", b"# ok\n\ntext\n", "text/markdown"))
    unnamed = client.post("/v1/collections/default/documents", files=[good, ("files", ("", b"# x\n", "text/plain"))])
    message = error_of(unnamed, 400)
    assert "empty file name" in message and "part 2" in message
    for char in ("\u202e", "\ufeff", "\u200b"):
        code = f"U+{ord(char):04X}"
        for name in (f"report{char}gpj.md", f"{char}notes.md"):
            upload = [("files", (name, b"# x\n", "text/plain"))]
            assert code in error_of(client.post("/v1/collections/default/documents", files=upload), 400)
        assert code in error_of(client.post("/v1/collections", json={"name": f"beta{char}"}), 400)
    assert "use 1-64 of a-z" in error_of(client.post("/v1/collections", json={"name": "../etc"}), 400)
    assert not (ws / "uploads").exists() or not any((ws / "uploads").iterdir())
    assert [c["name"] for c in client.get("/v1/collections").json()["collections"]] == ["default"]


def test_failed_uploads_are_listed_with_their_reason_and_can_be_removed(
    served: tuple[TestClient, Service, Path],
) -> None:
    """Defect 10: files that failed to ingest stayed in uploads/ with no API to see or remove them."""
    client, _, ws = served
    assert client.post("/v1/collections", json={"name": "messy"}).status_code == 201
    files = [
        ("files", ("good.md", b"# Good\n\nReadable text about turbines.\n", "text/markdown")),
        ("files", ("binary.txt", bytes(range(256)) * 8, "text/plain")),
        ("files", ("empty.md", b"", "text/markdown")),
    ]
    accepted = client.post("/v1/collections/messy/documents", files=files)
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{accepted.json()['id']}").json()["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    listed = client.get("/v1/collections/messy/uploads")
    assert listed.status_code == 200, listed.text
    uploads = {u["name"]: u for u in listed.json()["uploads"]}
    assert set(uploads) == {"good.md", "binary.txt", "empty.md"}
    documents = client.get("/v1/collections/messy/documents").json()["documents"]
    assert uploads["good.md"]["status"] == "ingested" and uploads["good.md"]["document_id"] == documents[0]["id"]
    for name in ("binary.txt", "empty.md"):
        assert uploads[name]["status"] == "failed" and uploads[name]["job_id"] == accepted.json()["id"]
    assert "binary" in uploads["binary.txt"]["reason"] and "empty" in uploads["empty.md"]["reason"]
    assert uploads["binary.txt"]["size"] == 2048

    folder = ws / "collections" / "messy" / "uploads"
    removed = client.delete("/v1/collections/messy/uploads/binary.txt")
    assert removed.json() == {"name": "binary.txt", "removed": 0, "chunks_removed": 0}
    assert not (folder / "binary.txt").exists()
    error_of(client.delete("/v1/collections/messy/uploads/binary.txt"), 404)
    error_of(client.delete("/v1/collections/messy/uploads/..%2Fragapp.toml"), 404)  # not even a route
    error_of(client.delete("/v1/collections/messy/uploads/.staging"), 400)
    # an ingested upload goes with its document
    gone = client.delete("/v1/collections/messy/uploads/good.md").json()
    assert gone["removed"] == 1 and gone["chunks_removed"] == documents[0]["chunks"]
    assert client.get("/v1/collections/messy/documents").json()["documents"] == []
    assert [u["name"] for u in client.get("/v1/collections/messy/uploads").json()["uploads"]] == ["empty.md"]
    assert client.delete("/v1/collections/messy").status_code == 204


def test_a_deleted_collection_takes_its_keys_scope_along(tmp_path: Path, fresh_database: None) -> None:
    """Defect 8: after `beta` was deleted and created again, the old key for `beta` read the new one."""
    api = create_app(tmp_path / "ws")
    service: Service = api.state.service
    admin, _ = service.keys.create(admin=True)
    with TestClient(api, raise_server_exceptions=False) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        assert client.post("/v1/collections", json={"name": "beta"}, headers=as_admin).status_code == 201
        only_beta, _ = service.keys.create(["beta"])
        beta_and_default, _ = service.keys.create(["beta", "default"])
        for secret in (only_beta, beta_and_default):
            found = client.get("/v1/collections/beta/documents", headers={"Authorization": f"Bearer {secret}"})
            assert found.status_code == 200
        assert client.delete("/v1/collections/beta", headers=as_admin).status_code == 204
        assert client.post("/v1/collections", json={"name": "beta"}, headers=as_admin).status_code == 201

        old = client.get("/v1/collections/beta/documents", headers={"Authorization": f"Bearer {only_beta}"})
        assert "not valid" in error_of(old, 401)  # revoked with its only collection
        other = {"Authorization": f"Bearer {beta_and_default}"}
        refused = client.get("/v1/collections/beta/documents", headers=other)
        assert "cannot read collection 'beta'" in error_of(refused, 403)
        assert [c["name"] for c in client.get("/v1/collections", headers=other).json()["collections"]] == ["default"]
        assert client.get("/v1/collections/beta/documents", headers=as_admin).status_code == 200
