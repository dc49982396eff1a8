"""Where the vLLM engine runs on a CPU: vLLM's default (an engine-core process and a worker process, the
baseline) against the engine inside the ragapp process (`engine_in_this_process`, what ragapp does on a
CPU), same prompts, same run.

The prompts are the RAG prompts of generation_throughput.py (ragapp's docs ingested, questions from their
headings). Each placement runs `--runs` times, alternating, every time in a fresh process that loads the
engine and generates the whole set twice (the first pass prepares the engine's kernels for the batch
shapes). Reported per placement, median over runs: seconds to load, tokens/s of the second pass, and the
CPU seconds of the whole process tree for loading and for that pass. Greedy float32 outputs must agree.

With `--server` the same comparison is made for `ragapp model serve`, whose vLLM server always keeps its
engine core in a process of its own: vLLM's default there adds a worker process (the baseline); ragapp's
placement on a CPU lets the engine core run the worker itself. Reported: seconds and CPU seconds of the
server's process tree until it answers, then tokens/s and CPU seconds of the second of two passes that send
every prompt at once to /v1/chat/completions (greedy).

    .venv/bin/python benchmarks/vllm_engine_placement.py [--server] [--runs 3] [--prompts 16] [--max-new-tokens 48]

Not a test: the ratios are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation_throughput import build_prompts, run_worker
from machine import cpu_name

PLACEMENTS = {"engine processes (vLLM default)": "1", "in this process (ragapp on CPU)": "0"}
SERVER_PLACEMENTS = {"engine core + worker (vLLM default)": "1", "engine core runs worker (ragapp)": "0"}


def tree_cpu(pid: int | None = None) -> float:
    """CPU seconds of process `pid` (default: this one) and every live process below it."""
    import psutil

    me = psutil.Process(pid)
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def worker(prompts_file: str, max_new_tokens: int) -> None:
    """One load and two passes in this process; prints one JSON line."""
    from ragapp.generators.base import GenerationConfig
    from ragapp.generators.vllm_local import VllmGenerator

    prompts = json.loads(Path(prompts_file).read_text())
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop=[])
    started, cpu0 = time.perf_counter(), tree_cpu()
    gen = VllmGenerator().load()
    load_s, cpu1 = time.perf_counter() - started, tree_cpu()
    gen.generate_batch(prompts, config)  # first pass: kernels for these batch shapes
    mark, cpu2 = time.perf_counter(), tree_cpu()
    outputs = gen.generate_batch(prompts, config)
    seconds, cpu3 = time.perf_counter() - mark, tree_cpu()
    tokens = sum(gen.text_tokens(t) for t in outputs)
    gen.close()
    print(json.dumps({"load_s": load_s, "load_cpu": cpu1 - cpu0, "rate": tokens / seconds,
                      "gen_cpu": cpu3 - cpu2, "outputs": outputs}))  # fmt: skip


def measure(placement: str, prompts_file: Path, max_new_tokens: int) -> dict[str, Any]:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": PLACEMENTS[placement]}
    cmd = [sys.executable, __file__, "--worker", str(prompts_file), str(max_new_tokens)]
    result = run_worker(cmd, placement, env)
    print(f"  {placement:34} load {result['load_s']:5.1f} s ({result['load_cpu']:5.1f} CPU-s), "
          f"{result['rate']:6.1f} tok/s ({result['gen_cpu']:5.1f} CPU-s)", flush=True)  # fmt: skip
    return result


def measure_server(placement: str, prompts: list[Any], max_new_tokens: int) -> dict[str, Any]:
    """`ragapp model serve` started with one placement: time and CPU to ready, then two concurrent passes."""
    import httpx

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": SERVER_PLACEMENTS[placement]}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "ragapp", "model", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        match = re.search(r" at (http://\S+/v1)$", server.stdout.readline().strip())  # printed once healthy
        if match is None:
            raise SystemExit(f"{placement}: the server did not start")
        ready_s, ready_cpu = time.perf_counter() - started, tree_cpu(server.pid)
        with httpx.Client(base_url=match.group(1), timeout=600) as client:
            model = client.get("/models").json()["data"][0]["id"]

            def complete(messages: Any) -> dict[str, Any]:
                body = {"model": model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0}
                reply: dict[str, Any] = client.post("/chat/completions", json=body).raise_for_status().json()
                return reply

            with ThreadPoolExecutor(len(prompts)) as pool:
                list(pool.map(complete, prompts))  # first pass: kernels for these batch shapes
                mark, cpu = time.perf_counter(), tree_cpu(server.pid)
                replies = list(pool.map(complete, prompts))
                seconds, gen_cpu = time.perf_counter() - mark, tree_cpu(server.pid) - cpu
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(120)
    tokens = sum(r["usage"]["completion_tokens"] for r in replies)
    outputs = [r["choices"][0]["message"]["content"] for r in replies]
    print(f"  {placement:34} ready {ready_s:5.1f} s ({ready_cpu:5.1f} CPU-s), "
          f"{tokens / seconds:6.1f} tok/s ({gen_cpu:5.1f} CPU-s)", flush=True)  # fmt: skip
    return {"load_s": ready_s, "load_cpu": ready_cpu, "rate": tokens / seconds, "gen_cpu": gen_cpu, "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--server", action="store_true", help="Compare `ragapp model serve` starts instead.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    prompts = build_prompts(args.prompts, args.max_new_tokens)
    placements = SERVER_PLACEMENTS if args.server else PLACEMENTS
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in placements}
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print(f"CPU: {cpu_name()}; OMP_NUM_THREADS {threads}")
        what = "`ragapp model serve`, concurrent requests" if args.server else "VllmGenerator"
        print(f"{what}: {len(prompts)} RAG prompts × {args.max_new_tokens} new tokens, greedy, {args.runs} runs")
        for _ in range(args.runs):
            for placement in placements:
                if args.server:
                    results[placement].append(measure_server(placement, prompts, args.max_new_tokens))
                else:
                    results[placement].append(measure(placement, prompts_file, args.max_new_tokens))

    def median(placement: str, key: str) -> float:
        return statistics.median(r[key] for r in results[placement])

    base, fast = placements
    print(f"\nmedian of {args.runs} runs   {'baseline':>10} {'ragapp':>11}  ratio")
    for key, label, gain in (("load_s", "load, s", "faster"), ("load_cpu", "load, CPU-s", "less CPU"),
                             ("rate", "tokens/s", "faster"), ("gen_cpu", "generate, CPU-s", "less CPU")):  # fmt: skip
        a, b = median(base, key), median(fast, key)
        ratio = b / a if key == "rate" else a / b
        print(f"{label:20} {a:>10.1f} {b:>11.1f}  {ratio:.2f}× {gain}")
    same = all(r["outputs"] == results[base][0]["outputs"] for rs in results.values() for r in rs)
    print(f"greedy outputs identical across placements and runs: {same}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
