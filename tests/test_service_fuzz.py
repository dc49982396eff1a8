"""Fuzz `ragapp serve` against its own OpenAPI schema with schemathesis.

A real server (a subprocess, the real models) over a workspace with ragapp's docs ingested. Every operation
in its `/openapi.json` goes through schemathesis' examples, coverage and fuzzing phases, and every response
must be: no 5xx, a documented status code, a documented content type and, for documented responses, valid
against the response schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.servers import Server, docs_workspace, serving

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Generation runs the real model (SmolLM2-135M on CPU), one request at a time: answers are cut to 4 new
# tokens and prompts to a 256-token window, so an answer takes a second or so instead of a minute.
MAX_NEW_TOKENS = 4
CONTEXT_WINDOW = 256
WORKSPACE_CONFIG = f"""\
[generation]
max_new_tokens = {MAX_NEW_TOKENS}
context_window = {CONTEXT_WINDOW}

[server]
queue_size = 64
"""
GENERATION = ["/v1/query", "/v1/chat/completions"]
CONFIG = {
    # Everything that does not generate (search, listings, collections and documents, jobs, conversations,
    # health, metrics, the widget): 50 fuzzed cases each, plus every coverage case. Nothing is excluded:
    # the destructive admin operations break nothing for later cases (deleting "default" is refused, other
    # collections are the fuzzer's own, a deleted document only thins the corpus), and they come after
    # the answering operations in the schema's order.
    "generation": {"max-examples": 50, "database": "none"},
    "operations": [
        {
            # Answering: a few fuzzed cases, and only the negative coverage cases (refused before any
            # generation); the positive coverage cases are ~40 answers each, minutes on a CPU.
            # `test_answers_conform_to_their_schema` covers valid answers, streamed and not.
            "include-path": GENERATION,
            "generation": {"max-examples": 6},
            "phases": {"coverage": {"generation": {"mode": "negative"}}},
        }
    ],
}
TIMEOUT = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    with serving(docs_workspace(tmp_path_factory, request, WORKSPACE_CONFIG)) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG))


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture(autouse=True)
def _nodeid_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis' `from_fixture` tests read and rewrite `item._nodeid`, an attribute pytest 9.2 no longer
    has (`nodeid` is a property over `_id` now); give it one so the fixture loader works. Only the names
    schemathesis would show per operation are lost: each operation still runs and reports as a subtest."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def bounded_generation(body: Any) -> None:
    """Cap the answer length the fuzzer asks for: at ~12 tokens/s a valid `max_tokens` of 200 is a long wait
    for nothing. Values over the context window stay as generated (the server refuses them at once)."""
    if isinstance(body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if type(value) is int and MAX_NEW_TOKENS < value <= CONTEXT_WINDOW:
                body[name] = MAX_NEW_TOKENS


ANSWERS = [
    ("/v1/query", 200, {"question": "How do I ingest a folder of PDFs?", "k": 2}),
    # The longest question the schema allows: too long for the model's window, which is the client's error.
    ("/v1/query", 400, {"question": "why " * 5000}),
    (
        "/v1/chat/completions",
        200,
        {
            "model": "default",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is hybrid search?"},
            ],
        },
    ),
    (
        "/v1/chat/completions",
        200,
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "How do I evaluate retrieval?"}]}],
            "stream": True,
            "max_completion_tokens": 2,
        },
    ),
]


@pytest.mark.parametrize(("path", "status", "body"), ANSWERS, ids=["query", "query-longest", "chat", "chat-stream"])
def test_answers_conform_to_their_schema(
    api_schema: schemathesis.BaseSchema, session: requests.Session, path: str, status: int, body: dict[str, Any]
) -> None:
    """Valid answering requests, which the fuzzer rarely writes (a chat must end with a user message),
    through the same checks."""
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(session=session, checks=CHECKS, timeout=TIMEOUT)
    assert response.status_code == status, response.text


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
def test_api_conforms_to_its_schema(case: schemathesis.Case, session: requests.Session) -> None:
    bounded_generation(case.body)
    case.call_and_validate(session=session, checks=CHECKS, timeout=TIMEOUT)
