"""Fuzz `ragapp serve` against its own OpenAPI schema with schemathesis.

A real server (a subprocess, the real models) over a workspace with ragapp's docs ingested; every
operation in `/openapi.json` gets the examples, coverage and fuzzing phases of schemathesis, and every
response must be: not a 5xx, a documented status code, a documented content type, and (for documented
responses) valid against the response schema. Generation is cut to 4 new tokens so answering is quick.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

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

from tests.conftest import DOCS
from tests.servers import Server, ragapp, serving

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The operations that generate an answer with the real model (~1 s or more each even at 4 tokens).
GENERATION = ["/v1/query", "/v1/chat/completions"]
FUZZ = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not any(DOCS.glob("*.md")):
        pytest.skip(f"no documentation in {DOCS}")
    root = tmp_path_factory.mktemp("fuzz")
    docs = root / "docs"
    shutil.copytree(DOCS, docs)
    ws = root / "ws"
    ws.mkdir()
    (ws / "ragapp.toml").write_text("[generation]\nmax_new_tokens = 4\n\n[server]\nqueue_size = 64\n", encoding="utf-8")
    done = ragapp(ws, "ingest", str(docs))
    assert done.returncode == 0, done.stderr
    with serving(ws) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


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


schema = schemathesis.pytest.from_fixture("api_schema")


# Everything that does not generate: retrieval, listings, collections and documents (create, delete and
# upload included: they only touch what the fuzzer made, or are refused), jobs, health, metrics, widget.
@schema.exclude(path=GENERATION).parametrize()
@settings(max_examples=30, **FUZZ)
def test_api_conforms_to_its_schema(case: schemathesis.Case, session: requests.Session) -> None:
    import sys; sys.path.insert(0, '/tmp/fz'); import conftest_debug as d
    r = case.call(session=session, timeout=60); d.record(case, r); case.validate_response(r, checks=CHECKS)


# Answering runs the model on the one generation thread: fewer examples.
@schema.include(path=GENERATION).parametrize()
@settings(max_examples=6, **FUZZ)
def test_generation_conforms_to_its_schema(case: schemathesis.Case, session: requests.Session) -> None:
    import sys; sys.path.insert(0, '/tmp/fz'); import conftest_debug as d
    r = case.call(session=session, timeout=120); d.record(case, r); case.validate_response(r, checks=CHECKS)
