"""The HTTP service in-process: `create_app` over a `Service` with a fake generator, driven through Starlette's
TestClient (httpx, no socket), or called as an ASGI app where a test needs to hang up mid-request. The
store, the embedding model, ingestion and the upload job worker are real.

Here is the control flow of the API: validation and 4xx bodies, API keys, body and queue limits, uploads and
their jobs, conversation bookkeeping, SSE framing. Real answers from the real model, over a real socket, are
in test_service_api.py.

Generation is a labelled FAKE (`FakeGenerator`, control flow only): it produces one word at a time, slowly,
counting them, so a test can see whether a generation stopped when its client went away; and it refuses a
prompt over its context window as the real backends do. Its words support nothing, so abstention is off
here (`[answer]`) except where a test turns it on; a test that needs supported sentences gives it a script.
Attribution itself (sentences, quotes, [n] marks) is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from ragapp import App
from ragapp.cli import cli
from ragapp.generators import GenerationConfig, Message
from ragapp.service import Service, create_app
from ragapp.service.collections import Collections
from ragapp.store import TurnRow
from tests.servers import assert_attribution
from tests.support import database_of_its_own

# Every test here touches the store: each runs on SQLite, then on PostgreSQL.
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
queue_size = 2
max_request_kb = 64
max_upload_mb = 1

[ingest]
max_file_mb = 0.2

[answer]
abstain = false
"""
QUESTION = "When is the blue pump serviced?"
CUT = "\u2026"  # how an answer that reached max_tokens mid-sentence ends


class FakeGenerator:
    """Fake, for control flow only: one word per `delay` seconds, counting them; tokens are words.
    Like the real backends, it raises on a prompt over its context window."""

    model_id = "fake-slow"
    device = "cpu"

    def __init__(self, delay: float = 0.02, context_window: int = 1024):
        self.delay = delay
        self.context_window = context_window
        self.produced = 0
        self.finished = 0  # generations that ran to their end
        self.prompts: list[list[Message]] = []
        self.script: str | None = None  # words to say instead of w0 w1 ...

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def text_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]:
        tokens = self.count_tokens(messages)
        if tokens > self.context_window:
            raise ValueError(f"prompt has {tokens} tokens; the context window of fake-slow is {self.context_window}")
        self.prompts.append(list(messages))
        words = self.script.split() if self.script is not None else [f"w{n}" for n in range(config.max_new_tokens)]
        for word in words[: config.max_new_tokens]:
            time.sleep(self.delay)
            self.produced += 1
            yield " " + word
        self.finished += 1

    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str:
        return "".join(self.stream(messages, config))


def write_notes(folder: Path) -> Path:
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def store_config() -> dict[str, dict[str, Any]] | None:
    """The PostgreSQL database the module runs on now, as a config layer for a module's `Service`: the tests
    clean RAGAPP_* from the environment, and a service opens its collections' Apps on first use."""
    url = os.environ.get("RAGAPP_DATABASE_URL")
    return {"database": {"url": url}} if url else None


@pytest.fixture(scope="module")
def generator() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, generator: FakeGenerator, module_database: str
) -> Iterator[tuple[TestClient, Service, Path]]:
    """An open service (no keys) over a workspace with NOTES ingested, on each store in turn."""
    ws = tmp_path_factory.mktemp("inprocess") / "ws"
    ws.mkdir()
    (ws / "ragapp.toml").write_text(CONFIG, encoding="utf-8")
    with App(ws) as app:
        app.ingest([write_notes(ws.parent / "notes")])
    service = Service(ws, config=store_config(), generator=generator)  # type: ignore[arg-type]  # the fake has only what answering uses
    api = create_app(service)
    with TestClient(api, raise_server_exceptions=False) as client:  # runs the lifespan: the job worker too
        yield client, service, ws


@pytest.fixture
def fake(generator: FakeGenerator) -> FakeGenerator:
    """The module's fake generator, its counts cleared."""
    generator.delay, generator.produced, generator.finished, generator.prompts = 0.02, 0, 0, []
    generator.script = None
    return generator


@pytest.fixture
def client(served: tuple[TestClient, Service, Path]) -> TestClient:
    return served[0]


def error_of(response: Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert body["code"] == status and body["type"] and body["message"]
    return str(body["message"])


def turns_stored(service: Service) -> int:
    with service.store.session() as s:
        return int(s.scalar(select(func.count()).select_from(TurnRow)) or 0)


def wait_for_job(client: TestClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def sse_events(response: Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


# -- health, schema, search ----------------------------------------------------------------------


def test_health_models_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "collections": 1, "generation_queue": 0}
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["default"]
    schema = client.get("/openapi.json").json()
    for path in (
        "/v1/chat/completions",
        "/v1/query",
        "/v1/search",
        "/v1/collections",
        "/v1/jobs/{job_id}",
        "/v1/collections/{collection}/documents",
        "/v1/collections/{collection}/documents/{document_id}",
    ):
        assert path in schema["paths"], path
    assert client.get("/widget").text.startswith("<!doctype html>") or "<html" in client.get("/widget").text
    assert client.get("/widget.js").headers["content-type"].startswith("text/javascript")


def test_search_returns_ranked_passages(client: TestClient) -> None:
    query = {"query": "how often is the blue pump serviced", "k": 2, "mode": "hybrid"}  # the real embedder too
    body = client.post("/v1/search", json=query).json()
    assert len(body["hits"]) == 2 and "90 days" in body["hits"][0]["text"]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert body["collection"] == "default" and body["timings"]["search_s"] >= 0
    only = client.post(
        "/v1/search", json={"query": "blue pump", "k": 2, "mode": "bm25", "filters": {"source": "*valves.md"}}
    ).json()
    assert only["hits"] and all(h["source"].endswith("valves.md") for h in only["hits"])


# -- answers: JSON, SSE, conversations -----------------------------------------------------------


def test_chat_completion_is_openai_shaped_and_its_stream_is_framed_as_sse(
    served: tuple[TestClient, Service, Path], fake: FakeGenerator
) -> None:
    client, service, _ = served
    fake.delay = 0.0
    before = turns_stored(service)
    request = {"model": "default", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 5}
    plain = client.post("/v1/chat/completions", json=request).json()
    assert plain["object"] == "chat.completion" and plain["id"].startswith("chatcmpl-") and plain["model"] == "default"
    choice = plain["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "w0 w1 w2 w3 w4" + CUT}
    assert choice["finish_reason"] == "length"  # max_tokens reached
    usage = plain["usage"]
    assert usage["completion_tokens"] == 5 and usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert plain["citations"] and plain["citations"][0]["n"] == 1 and len(plain["conversation_id"]) == 32

    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert pieces == ["w0", " w1", " w2", " w3", " w4", CUT]  # one event per token; the first one stripped
    last = chunks[-1]
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert [c["chunk_id"] for c in last["citations"]] == [c["chunk_id"] for c in plain["citations"]]
    assert last["usage"] == usage and last["conversation_id"] != plain["conversation_id"]
    assert turns_stored(service) == before + 2


def test_an_error_during_a_stream_is_its_last_event(client: TestClient, fake: FakeGenerator) -> None:
    too_long = {"messages": [{"role": "user", "content": "why is that so? " * 400}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=too_long) as response:
        assert response.status_code == 200  # the error comes after the stream began
        events = sse_events(response)
    assert events[-1] == "[DONE]" and json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 400 and "token budget" in error["message"] and error["type"] == "invalid_request_error"
    assert fake.produced == 0


def test_query_answers_and_conversations_are_stored_per_key(client: TestClient, fake: FakeGenerator) -> None:
    fake.delay = 0.0
    first = client.post("/v1/query", json={"question": QUESTION, "k": 2, "max_tokens": 3}).json()
    assert first["answer"] == "w0 w1 w2" + CUT and first["model"] == "fake-slow" and first["collection"] == "default"
    assert len(first["chunks"]) == 2 and first["standalone_question"] == QUESTION
    assert [c["n"] for c in first["citations"]] == list(range(1, len(first["citations"]) + 1))
    assert {"retrieve_s", "generate_s", "queue_s", "condense_s"} <= set(first["timings"])
    cid = first["conversation_id"]
    follow = client.post("/v1/query", json={"question": "And who does it?", "conversation_id": cid, "max_tokens": 3})
    assert follow.status_code == 200, follow.text
    assert follow.json()["conversation_id"] == cid
    assert follow.json()["standalone_question"].startswith("w0 w1 w2")  # the fake rewrote the follow-up
    chat = {"messages": [{"role": "user", "content": "Thanks."}], "conversation_id": cid, "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=chat).json()["conversation_id"] == cid
    turns = client.get(f"/v1/conversations/{cid}").json()["turns"]
    assert [t["question"] for t in turns] == [QUESTION, "And who does it?", "Thanks."]
    assert turns[0]["answer"] == "w0 w1 w2" + CUT and turns[0]["citations"]
    assert (turns[0]["sentences"], turns[0]["abstained"]) == (first["sentences"], first["abstained"])
    assert turns[1]["standalone_question"] == follow.json()["standalone_question"]
    error_of(client.post("/v1/query", json={"question": "q", "conversation_id": "nope"}), 404)
    error_of(client.get("/v1/conversations/nope"), 404)
    error_of(client.get(f"/v1/conversations/{cid}", params={"collection": "nope"}), 404)


SUPPORTED = (
    "The blue pump in hall 7 is serviced every 90 days by the night shift. "
    "Valve V-12 must be closed before the blue pump is opened for service."
)


def test_answers_carry_their_sentences_in_json_and_in_the_stream(client: TestClient, fake: FakeGenerator) -> None:
    """The fake says what the notes say (scripted); attribution is real: each sentence cites its note and
    quotes it, marks are added after the sentences, and JSON and stream carry the same sentences."""
    fake.delay, fake.script = 0.0, SUPPORTED
    query = client.post("/v1/query", json={"question": QUESTION, "k": 2}).json()
    assert_attribution(query, query["answer"])
    citations = {c["n"]: c for c in query["citations"]}
    pumps = next(n for n, c in citations.items() if c["source"].endswith("pumps.md"))
    valves = next(n for n, c in citations.items() if c["source"].endswith("valves.md"))
    first, second = query["sentences"]
    assert first["citations"][0] == pumps and second["citations"][0] == valves
    quote = first["quote"]
    assert "every 90 days" in citations[pumps]["text"][quote["start"] : quote["end"]]
    assert f"night shift.[{pumps}]" in query["answer"] and query["answer"].endswith(f"service.[{valves}]")
    assert query["abstained"] is False and all(c["cited"] for c in citations.values())

    request = {"messages": [{"role": "user", "content": QUESTION}], "k": 2}
    plain = client.post("/v1/chat/completions", json=request).json()
    content = plain["choices"][0]["message"]["content"]
    assert content == query["answer"] and plain["sentences"] == query["sentences"] and plain["abstained"] is False
    assert_attribution(plain, content)
    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    last = chunks[-1]
    assert last["sentences"] == plain["sentences"] and last["abstained"] is False
    assert last["citations"] == plain["citations"] and last["answer"] == content
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content  # marks streamed too
    assert_attribution(last, last["answer"])


def test_an_unsupported_draft_is_answered_with_the_best_passage(
    served: tuple[TestClient, Service, Path], fake: FakeGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With abstention on and `answer.unsupported = "quote"` (the defaults), the fake's unsupported words
    give way to the passage text that best matches the question, cited, and streamed after the draft."""
    client, service, _ = served
    monkeypatch.setattr(service.app("default").config.answer, "abstain", True)
    fake.delay = 0.0
    query = client.post("/v1/query", json={"question": QUESTION, "max_tokens": 3}).json()
    assert query["abstained"] is False and query["sentences"] and "w0" not in query["answer"]
    assert_attribution(query, query["answer"])
    best = next(c for c in query["citations"] if c["chunk_id"] == query["sentences"][0]["quote"]["chunk_id"])
    assert best["cited"] and query["sentences"][0]["text"] in best["text"]  # the passage's own words
    request = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == "w0 w1 w2" + CUT + "\n\n" + query["answer"] and chunks[-1]["answer"] == query["answer"]


def test_an_unsupported_draft_is_answered_not_found(
    served: tuple[TestClient, Service, Path], fake: FakeGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With abstention on (the default; off in this module), the fake's words support nothing: the answer
    is the not-found message, the citations the closest passages, none cited; the stream's last chunk
    says so and carries that final `answer` (the draft was streamed before it)."""
    client, service, _ = served
    settings = service.app("default").config.answer
    monkeypatch.setattr(settings, "abstain", True)
    monkeypatch.setattr(settings, "unsupported", "abstain")
    fake.delay = 0.0
    query = client.post("/v1/query", json={"question": QUESTION, "max_tokens": 3}).json()
    assert query["abstained"] is True and query["answer"] == settings.not_found
    assert query["sentences"] == [] and query["citations"] and not any(c["cited"] for c in query["citations"])
    assert_attribution(query, query["answer"])
    request = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3}
    plain = client.post("/v1/chat/completions", json=request).json()
    assert plain["abstained"] is True and plain["choices"][0]["message"]["content"] == settings.not_found
    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    last = chunks[-1]
    assert last["abstained"] is True and last["sentences"] == [] and last["answer"] == settings.not_found
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == "w0 w1 w2" + CUT + "\n\n" + settings.not_found
    turns = client.get(f"/v1/conversations/{query['conversation_id']}").json()["turns"]
    assert turns[0]["answer"] == settings.not_found and not any(c["cited"] for c in turns[0]["citations"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}]}),
        ("/v1/query", {"question": QUESTION}),
    ],
    ids=["chat", "query"],
)
def test_a_non_streamed_answer_stops_when_its_client_hangs_up(
    served: tuple[TestClient, Service, Path], fake: FakeGenerator, path: str, body: dict[str, Any]
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


async def hang_up_during(api: FastAPI, path: str, body: dict[str, Any], fake: FakeGenerator) -> tuple[int, float]:
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


def test_a_long_history_is_cut_to_the_window_and_a_too_long_question_is_a_400(
    client: TestClient, fake: FakeGenerator
) -> None:
    """Defect 5: 50 long turns overflowed the window while the follow-up was rewritten: a 500."""
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


# -- limits ---------------------------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(served: tuple[TestClient, Service, Path], fake: FakeGenerator) -> None:
    client, service, _ = served
    fake.delay = 0.05  # 20 tokens: a second each, while the others arrive
    rejected_before = metric(client.get("/metrics").text, "ragapp_generation_rejected_total")

    def ask(n: int) -> Response:
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 20}
        if n % 2:  # a stream is refused before its first byte, the same
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                response.read()
                return response
        return client.post("/v1/chat/completions", json=body)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(ask, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses  # queue_size = 2: two were taken
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert "queue is full" in error_of(r, 503)
    metrics = client.get("/metrics").text
    assert metric(metrics, "ragapp_generation_rejected_total") - rejected_before == statuses.count(503)
    assert client.get("/healthz").json()["generation_queue"] == 0 and service.queue.depth == 0


def test_oversized_bodies_get_413(client: TestClient) -> None:
    big = {"query": "x" * 70_000}  # over server.max_request_kb = 64
    assert "over 65536 bytes" in error_of(client.post("/v1/search", json=big), 413)

    # a body that lies about its size (chunked, no Content-Length) is cut off just the same
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(80):
            yield b"y" * 1000
        yield b'"}'

    error_of(client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert client.get("/healthz").status_code == 200  # and the service is fine


def test_metrics_count_requests_latency_and_tokens(client: TestClient, fake: FakeGenerator) -> None:
    fake.delay = 0.0
    client.post("/v1/search", json={"query": "pump"})
    client.post("/v1/query", json={"question": QUESTION, "max_tokens": 3})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'ragapp_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'ragapp_request_seconds_bucket{le="0.5",route="/v1/search"}' in text
    assert metric(text, 'ragapp_tokens_total{kind="prompt"}') > 0
    assert metric(text, 'ragapp_tokens_total{kind="completion"}') >= 3


# -- bad input ------------------------------------------------------------------------------------


def test_malformed_and_wrongly_typed_requests(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    assert "not valid JSON" in error_of(client.post("/v1/search", content=b"{not json", headers=headers), 400)
    error_of(client.post("/v1/search", content=b"\xff\xfe", headers=headers), 400)
    error_of(client.post("/v1/search", json={"query": 5}), 422)
    error_of(client.post("/v1/search", json={"query": ""}), 422)
    error_of(client.post("/v1/search", json={"query": "x", "k": 0}), 422)
    error_of(client.post("/v1/search", json={"query": "x", "k": "many"}), 422)
    error_of(client.post("/v1/search", json={"query": "x", "mode": "magic"}), 422)
    error_of(client.post("/v1/search", json={"query": "x", "typo": 1}), 422)  # own endpoints: unknown fields refused
    assert "unknown filter key" in error_of(
        client.post("/v1/search", json={"query": "x", "filters": {"colour": "red"}}), 400
    )
    error_of(client.post("/v1/search", json=["query"]), 422)
    error_of(client.post("/v1/chat/completions", json={"messages": []}), 422)
    error_of(client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "hi"}]}), 422)
    error_of(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "n": 2}), 422)
    error_of(
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
        422,
    )
    last_assistant = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert "last message must be a user message" in error_of(
        client.post("/v1/chat/completions", json=last_assistant), 400
    )
    error_of(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "   "}]}), 400)
    error_of(
        client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        404,
    )
    error_of(client.post("/v1/query", json={"question": "x" * 20_001}), 422)
    assert "use 1-64 of a-z" in error_of(client.post("/v1/collections", json={"name": "../etc"}), 400)
    error_of(client.get("/v1/jobs/unknown"), 404)
    error_of(client.get("/v1/no-such-route"), 404)
    error_of(client.put("/v1/search", json={"query": "x"}), 405)
    error_of(client.delete("/v1/collections/default/documents/many"), 422)


def test_empty_collection_is_a_clear_conflict(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "blank"}).status_code == 201
    error_of(client.post("/v1/collections", json={"name": "blank"}), 409)
    assert "nothing ingested yet" in error_of(
        client.post("/v1/search", json={"query": "x", "collection": "blank"}), 409
    )
    error_of(client.post("/v1/query", json={"question": "x", "collection": "blank"}), 409)
    assert client.get("/v1/collections").json()["collections"][1] == {"name": "blank", "documents": 0, "chunks": 0}
    assert client.delete("/v1/collections/blank").status_code == 204
    error_of(client.delete("/v1/collections/blank"), 404)
    error_of(client.delete("/v1/collections/default"), 400)


# -- uploads and their jobs -------------------------------------------------------------------------


def test_bad_uploads_are_refused_whole_and_write_nothing(
    client: TestClient, served: tuple[TestClient, Service, Path]
) -> None:
    ws = served[2]
    client.post("/v1/collections", json={"name": "strict"})
    folder = ws / "collections" / "strict"
    good = ("files", ("ok.md", b"# ok\n\ntext\n", "text/markdown"))
    cases = [
        ([good, ("files", ("tool.exe", b"MZ\x90\x00", "application/octet-stream"))], 415),
        ([good, ("files", ("../../escape.md", b"# x\n", "text/markdown"))], 400),
        ([good, ("files", ("..", b"# x\n", "text/markdown"))], 400),
        ([good, ("files", ("sub/dir.md", b"# x\n", "text/markdown"))], 400),
        ([good, good], 400),  # the same name twice
        ([good, ("files", ("big.txt", b"a" * 250_000, "text/plain"))], 413),  # over ingest.max_file_mb = 0.2
        ([("files", ("huge.txt", b"a" * 1_100_000, "text/plain"))], 413),  # over server.max_upload_mb = 1
    ]
    for files, status in cases:
        error_of(client.post("/v1/collections/strict/documents", files=files), status)
    error_of(client.post("/v1/collections/strict/documents", data={"x": "1"}), 422)  # no files at all
    error_of(client.post("/v1/collections/nope/documents", files=[good]), 404)
    staging = folder / ".staging"
    assert not staging.exists() or not list(staging.iterdir())
    assert not (folder / "uploads").exists()
    assert not (ws.parent / "escape.md").exists() and not (ws / "escape.md").exists()
    assert client.get("/v1/collections/strict/documents").json()["documents"] == []
    assert client.delete("/v1/collections/strict").status_code == 204


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
    assert accepted.json()["status"] in ("queued", "running", "completed")
    job = wait_for_job(client, accepted.json()["id"])
    assert job["status"] == "completed" and job["report"]["added"] == 1
    problems = {p["source"]: p["reason"] for p in job["report"]["problems"]}
    assert set(problems) == {"binary.txt", "empty.md"}  # named by upload name, not the server's path
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


# -- API keys -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory,
    generator: FakeGenerator,
    module_database: str,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A service whose workspace has keys, made with `ragapp keys create` as a user would: an admin, a
    reader of `default` and a revoked one; `default` and `beta` hold NOTES."""
    with database_of_its_own(request):  # keys make a workspace require them: apart from `served`'s
        ws = tmp_path_factory.mktemp("keyed") / "ws"
        ws.mkdir()
        (ws / "ragapp.toml").write_text("[generation]\nmax_new_tokens = 4\n", encoding="utf-8")
        notes = write_notes(ws.parent / "notes")
        with App(ws) as app:
            app.ingest([notes])
            collections = Collections(ws, app.open_store())
            collections.create("beta")  # a second collection with the same content
            collections.app("beta").ingest([notes])
            collections.close()
        secrets = {}
        runner = CliRunner()
        for name, args in (("admin", ["--admin"]), ("reader", ["--collection", "default"]), ("revoked", ["--admin"])):
            result = runner.invoke(cli, ["--workspace", str(ws), "keys", "create", *args, "--json"])
            assert result.exit_code == 0, result.output
            secrets[name] = json.loads(result.stdout)["key"]
        assert runner.invoke(cli, ["--workspace", str(ws), "keys", "revoke", "3"]).exit_code == 0
        api = create_app(Service(ws, config=store_config(), generator=generator))  # type: ignore[arg-type]  # see `served`
        with TestClient(api, raise_server_exceptions=False) as client:
            yield client, secrets


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_requests_need_a_valid_key(keyed: tuple[TestClient, dict[str, str]]) -> None:
    client, secrets = keyed
    assert client.get("/healthz").status_code == 200  # health needs no key
    for method, path, body in (
        ("POST", "/v1/search", {"query": "code"}),
        ("POST", "/v1/search", {"query": 5}),  # the key is checked before the body
        ("GET", "/v1/collections", None),
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        response = client.request(method, path, json=body)
        assert "API key is required" in error_of(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/v1/search", json={"query": "code"}, headers=bearer("rag_wrong"))
    assert "not valid" in error_of(wrong, 401)
    basic = client.post("/v1/search", json={"query": "code"}, headers={"Authorization": "Basic dXNlcjpwdw=="})
    error_of(basic, 401)
    error_of(client.get("/v1/collections", headers=bearer(secrets["revoked"])), 401)


def test_keys_read_only_their_collections(keyed: tuple[TestClient, dict[str, str]], fake: FakeGenerator) -> None:
    client, secrets = keyed
    fake.delay = 0.0
    reader, admin = bearer(secrets["reader"]), bearer(secrets["admin"])
    found = client.post("/v1/search", json={"query": "blue pump"}, headers=reader)
    assert found.status_code == 200 and found.json()["hits"], found.text
    assert [c["name"] for c in client.get("/v1/collections", headers=reader).json()["collections"]] == ["default"]
    assert [m["id"] for m in client.get("/v1/models", headers=reader).json()["data"]] == ["default"]
    error_of(client.post("/v1/search", json={"query": "blue pump", "collection": "beta"}, headers=reader), 403)
    chat = {"model": "beta", "messages": [{"role": "user", "content": "pump?"}]}
    assert "cannot read collection 'beta'" in error_of(
        client.post("/v1/chat/completions", json=chat, headers=reader), 403
    )
    error_of(client.get("/v1/collections/beta/documents", headers=reader), 403)
    error_of(client.get("/v1/collections/beta/uploads", headers=reader), 403)
    # reading is not managing
    assert "admin API key" in error_of(client.post("/v1/collections", json={"name": "mine"}, headers=reader), 403)
    error_of(client.delete("/v1/collections/beta", headers=reader), 403)
    files = [("files", ("x.md", b"# x\n\nplanted\n", "text/markdown"))]
    error_of(client.post("/v1/collections/default/documents", files=files, headers=reader), 403)
    documents = client.get("/v1/collections/default/documents", headers=reader).json()["documents"]
    error_of(client.delete(f"/v1/collections/default/documents/{documents[0]['id']}", headers=reader), 403)
    error_of(client.delete("/v1/collections/default/uploads/x.md", headers=reader), 403)
    error_of(client.get("/metrics", headers=reader), 403)
    asked = client.post("/v1/query", json={"question": "Where is the blue pump?"}, headers=reader).json()

    assert [c["name"] for c in client.get("/v1/collections", headers=admin).json()["collections"]] == [
        "default",
        "beta",
    ]
    assert client.post("/v1/search", json={"query": "blue pump", "collection": "beta"}, headers=admin).json()["hits"]
    assert "ragapp_requests_total" in client.get("/metrics", headers=admin).text
    # a conversation belongs to the key that started it
    error_of(client.get(f"/v1/conversations/{asked['conversation_id']}", headers=admin), 404)
    follow = {"question": "And the beta one?", "conversation_id": asked["conversation_id"]}
    error_of(client.post("/v1/query", json=follow, headers=admin), 404)
    assert len(client.get(f"/v1/conversations/{asked['conversation_id']}", headers=reader).json()["turns"]) == 1


def test_a_job_is_seen_only_by_keys_that_read_its_collection(keyed: tuple[TestClient, dict[str, str]]) -> None:
    client, secrets = keyed
    admin = bearer(secrets["admin"])
    files = [("files", ("gears.md", b"# Gears\n\nThe gearbox oil is changed yearly.\n", "text/markdown"))]
    accepted = client.post("/v1/collections/beta/documents", files=files, headers=admin)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert accepted.json()["collection"] == "beta"
    assert "no job" in error_of(client.get(f"/v1/jobs/{job_id}", headers=bearer(secrets["reader"])), 404)
    deadline = time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{job_id}", headers=admin).json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "completed" and job["report"]["added"] == 1


def test_a_deleted_collection_takes_its_keys_scope_along(tmp_path: Path, fresh_database: None) -> None:
    """Defect 8: after `beta` was deleted and created again, the old key for `beta` read the new one."""
    service = Service(tmp_path / "ws")
    admin, _ = service.keys.create(admin=True)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        as_admin = bearer(admin)
        assert client.post("/v1/collections", json={"name": "beta"}, headers=as_admin).status_code == 201
        only_beta, _ = service.keys.create(["beta"])
        beta_and_default, _ = service.keys.create(["beta", "default"])
        for secret in (only_beta, beta_and_default):
            assert client.get("/v1/collections/beta/documents", headers=bearer(secret)).status_code == 200
        assert client.delete("/v1/collections/beta", headers=as_admin).status_code == 204
        assert client.post("/v1/collections", json={"name": "beta"}, headers=as_admin).status_code == 201

        old = client.get("/v1/collections/beta/documents", headers=bearer(only_beta))
        assert "not valid" in error_of(old, 401)  # revoked with its only collection
        other = bearer(beta_and_default)
        refused = client.get("/v1/collections/beta/documents", headers=other)
        assert "cannot read collection 'beta'" in error_of(refused, 403)
        assert [c["name"] for c in client.get("/v1/collections", headers=other).json()["collections"]] == ["default"]
        assert client.get("/v1/collections/beta/documents", headers=as_admin).status_code == 200
