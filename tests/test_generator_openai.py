"""Control flow of the openai backend against a FAKE OpenAI-compatible server (stdlib HTTP on 127.0.0.1).

The fake answers with canned JSON so the error paths (server errors, timeouts, dropped streams, retries,
servers without vLLM's extensions) can be produced on demand. The real server is tested end to end in
test_model_serve.py; nothing here stands in for it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ragapp.errors import GenerationError, ScoringUnsupported
from ragapp.generators.base import GenerationConfig
from ragapp.generators.openai_client import OpenAIGenerator

MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]
GREEDY = GenerationConfig(max_new_tokens=16, stop=[])
Handler = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


def reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "c1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }  # fmt: skip


def sse(handler: BaseHTTPRequestHandler, pieces: list[str], drop_after: int | None = None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    for i, piece in enumerate(pieces):
        if drop_after is not None and i == drop_after:
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)  # the server dies mid-answer
            return
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
        handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.flush()
    last = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
    handler.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())


class FakeServer:
    """Routes "METHOD /path" to handlers; records every request body."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {"GET /v1/models": lambda h, b: reply(h, 200, {"object": "list", "data": [
            {"id": "fake", "object": "model", "created": 0, "owned_by": "test"}]})}  # fmt: skip
        self.requests: list[tuple[str, dict[str, Any]]] = []
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                key = f"{method} {self.path}"
                fake.requests.append((key, body))
                handler = fake.routes.get(key)
                if handler is None:
                    reply(self, 404, {"detail": "Not Found"})
                else:
                    handler(self, body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def gen(fake: FakeServer, **kwargs: Any) -> OpenAIGenerator:
    kwargs.setdefault("max_retries", 0)
    return OpenAIGenerator(fake.url, **kwargs).load()


def test_picks_the_served_model_and_sends_sampling_settings(fake: FakeServer) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: reply(h, 200, completion("Hi! [1]"))
    g = gen(fake)
    assert g.model_id == "fake"
    assert g.generate(MESSAGES, GREEDY) == "Hi! [1]"
    sampled = GenerationConfig(max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9, seed=3, stop=["\n\n"])
    g.generate(MESSAGES, sampled)
    greedy_body, sampled_body = fake.requests[-2][1], fake.requests[-1][1]
    assert greedy_body["temperature"] == 0 and "top_k" not in greedy_body and "seed" not in greedy_body
    assert greedy_body["max_tokens"] == 16 and greedy_body["messages"] == MESSAGES
    assert sampled_body | {} == {**sampled_body, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "seed": 3,
                                  "stop": ["\n\n"], "max_tokens": 8}  # fmt: skip


def test_unknown_model_names_what_is_served(fake: FakeServer) -> None:
    with pytest.raises(GenerationError, match=r"does not serve 'big' \(it serves: fake\)"):
        gen(fake, model="big")


def test_server_down(fake: FakeServer) -> None:
    url = fake.url
    fake.close()
    with pytest.raises(GenerationError, match=f"cannot reach the generation server at {url}.*ragapp model serve"):
        OpenAIGenerator(url, max_retries=0).load()


def test_server_error_message_is_passed_on(fake: FakeServer) -> None:
    error = {"error": {"message": "This model's maximum context length is 2048 tokens", "type": "BadRequestError"}}
    fake.routes["POST /v1/chat/completions"] = lambda h, b: reply(h, 400, error)
    with pytest.raises(GenerationError, match="answered 400: This model's maximum context length is 2048"):
        gen(fake).generate(MESSAGES, GREEDY)


def test_timeout(fake: FakeServer) -> None:
    def slow(h: BaseHTTPRequestHandler, b: dict[str, Any]) -> None:
        time.sleep(1.5)
        reply(h, 200, completion("late"))

    fake.routes["POST /v1/chat/completions"] = slow
    started = time.monotonic()
    with pytest.raises(GenerationError, match=r"did not answer within 0.3 s \(tried 1 times\)"):
        gen(fake, timeout=0.3).generate(MESSAGES, GREEDY)
    assert time.monotonic() - started < 1.4


def test_retries_a_failing_server(fake: FakeServer) -> None:
    calls: list[int] = []

    def flaky(h: BaseHTTPRequestHandler, b: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 1:
            reply(h, 503, {"error": {"message": "overloaded"}})
        else:
            reply(h, 200, completion("second time lucky"))

    fake.routes["POST /v1/chat/completions"] = flaky
    assert gen(fake, max_retries=2).generate(MESSAGES, GREEDY) == "second time lucky"
    assert len(calls) == 2


def test_stream_cuts_a_stop_string_split_across_chunks(fake: FakeServer) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: sse(
        h, ["Paris is", " the capital.\n", "\nQuest", "ion: more"]
    )
    config = GenerationConfig(max_new_tokens=16, stop=["\nQuestion:"])
    assert "".join(gen(fake).stream(MESSAGES, config)) == "Paris is the capital.\n"


def test_stream_dropped_by_the_server_is_a_clear_error(fake: FakeServer) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: sse(h, ["one", " two", " three"], drop_after=2)
    pieces: list[str] = []
    with pytest.raises(GenerationError, match="generating"):
        pieces.extend(gen(fake).stream(MESSAGES, GREEDY))  # keeps what came before the error
    assert "".join(pieces) == "one two"


def test_batch_keeps_order_with_concurrent_requests(fake: FakeServer) -> None:
    def echo(h: BaseHTTPRequestHandler, b: dict[str, Any]) -> None:
        text = b["messages"][-1]["content"]
        time.sleep(0.05 * (len(text) % 3))  # answers finish out of order
        reply(h, 200, completion(text.upper()))

    fake.routes["POST /v1/chat/completions"] = echo
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(10)]
    assert gen(fake).generate_batch(conversations, GREEDY) == [f"QUESTION {i}" for i in range(10)]


def test_without_tokenize_counts_are_conservative_estimates(fake: FakeServer) -> None:
    g = gen(fake, context_window=4096)
    assert not g.exact_counts and g.context_window == 4096
    assert g.count_tokens(MESSAGES) >= len(MESSAGES[0]["content"]) / 3
    with pytest.raises(ScoringUnsupported, match="no /tokenize"):
        g.reference_nll(MESSAGES, "I am fine.")


def test_with_tokenize_counts_and_window_come_from_the_server(fake: FakeServer) -> None:
    def tokenize(h: BaseHTTPRequestHandler, b: dict[str, Any]) -> None:
        n = len(b["messages"]) * 10 if "messages" in b else len(b["prompt"].split())
        reply(h, 200, {"count": n, "max_model_len": 1024, "tokens": list(range(n))})

    fake.routes["POST /tokenize"] = tokenize
    g = gen(fake)
    assert g.exact_counts and g.context_window == 1024
    assert g.count_tokens(MESSAGES) == 10 and g.text_tokens("three words here") == 3
    assert fake.requests[-1][1] == {"model": "fake", "prompt": "three words here", "add_special_tokens": False}
    fake.routes["POST /v1/completions"] = lambda h, b: reply(h, 200, {
        "id": "x", "object": "text_completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": None}]})  # fmt: skip
    with pytest.raises(ScoringUnsupported, match="no prompt log-probabilities"):
        g.reference_nll(MESSAGES, "fine thanks")


# -- repetition: the penalty's mapping per server, and the repeat guard ---------------------------


def test_presence_penalty_is_proportional_to_the_repetition_penalty_and_clamped() -> None:
    from ragapp.generators.openai_client import presence_penalty

    pairs = {1.0: 0.0, 1.05: 0.5, 1.1: 1.0, 1.2: 2.0, 2.0: 2.0, 0.9: -1.0, 0.5: -2.0}
    assert {r: presence_penalty(r) for r in pairs} == pairs


def test_repetition_penalty_becomes_presence_penalty_on_servers_other_than_vllm(fake: FakeServer) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: reply(h, 200, completion("Hi!"))
    g = gen(fake)
    assert not g.vllm_server  # the fake's models are owned_by "test"
    g.generate(MESSAGES, GREEDY)
    assert "presence_penalty" not in fake.requests[-1][1] and "repetition_penalty" not in fake.requests[-1][1]
    g.generate(MESSAGES, GREEDY.model_copy(update={"repetition_penalty": 1.1}))
    body = fake.requests[-1][1]
    assert body["presence_penalty"] == 1.0 and "repetition_penalty" not in body


def test_vllm_servers_get_the_repetition_penalty_itself(fake: FakeServer) -> None:
    fake.routes["GET /v1/models"] = lambda h, b: reply(h, 200, {"object": "list", "data": [
        {"id": "fake", "object": "model", "created": 0, "owned_by": "vllm"}]})  # fmt: skip
    fake.routes["POST /v1/chat/completions"] = lambda h, b: reply(h, 200, completion("Hi!"))
    g = gen(fake)
    assert g.vllm_server
    sampled = GenerationConfig(max_new_tokens=8, temperature=0.7, top_k=20, repetition_penalty=1.3)
    g.generate(MESSAGES, sampled)
    body = fake.requests[-1][1]
    assert body["repetition_penalty"] == 1.3 and body["top_k"] == 20 and "presence_penalty" not in body
    assert g.chat_model(sampled, 2048).invoke("Hello").content == "Hi!"  # the agent's model sends the same
    agent_body = fake.requests[-1][1]
    assert agent_body["repetition_penalty"] == 1.3 and agent_body["top_k"] == 20 and agent_body["top_p"] == 1.0


def test_no_repeat_ngram_size_is_ignored_with_one_warning(fake: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: reply(h, 200, completion("Hi!"))
    g = gen(fake)
    config = GREEDY.model_copy(update={"no_repeat_ngram_size": 3})
    with caplog.at_level("WARNING", logger="ragapp.generators.openai_client"):
        assert g.generate(MESSAGES, config) == g.generate(MESSAGES, config) == "Hi!"
    (record,) = caplog.records
    assert record.getMessage() == (
        f"no_repeat_ngram_size=3 is ignored: the server at {fake.url} has no such setting (repetition_penalty "
        "works, and repeated sentences are still cut)"
    )
    assert "no_repeat_ngram_size" not in json.dumps(fake.requests[-1][1])


SENTENCE = "Sync removes documents whose files are gone [1]. "


def test_generate_cuts_a_repeated_sentence(fake: FakeServer) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: reply(h, 200, completion(SENTENCE * 20))
    assert gen(fake).generate(MESSAGES, GREEDY) == SENTENCE.strip()


def test_stream_stops_reading_at_a_repeated_sentence(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.routes["POST /v1/chat/completions"] = lambda h, b: sse(h, [SENTENCE] * 50)
    g = gen(fake)
    create, read, closed = g.client.chat.completions.create, [], []

    class Counting:
        """TEST DOUBLE around the real openai Stream: counts the chunks the generator reads and the close."""

        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def __iter__(self) -> Iterator[Any]:
            for chunk in self.stream:
                read.append(chunk)
                yield chunk

        def close(self) -> None:
            closed.append(True)
            self.stream.close()

    monkeypatch.setattr(g.client.chat.completions, "create", lambda **kwargs: Counting(create(**kwargs)))
    assert "".join(g.stream(MESSAGES, GREEDY)) == SENTENCE.strip()
    assert len(read) == 2 and closed  # the second piece completes the repeat (each ends with a space)


def test_stream_ended_by_a_stop_string_releases_what_the_guard_held(fake: FakeServer) -> None:
    """ "Sync removes." reads like the start of the first sentence until it ends; the stop string comes next."""
    first = "Sync removes documents whose files are gone. "
    fake.routes["POST /v1/chat/completions"] = lambda h, b: sse(h, [first, "Sync removes.", "\nQuestion: x"])
    config = GREEDY.model_copy(update={"stop": ["\nQuestion:"]})
    assert "".join(gen(fake).stream(MESSAGES, config)) == first + "Sync removes."
