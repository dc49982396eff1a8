"""Where the vLLM engine runs on a CPU: vLLM's default (an engine-core process and a worker process, the
baseline) against the engine inside the ragapp process (`engine_in_this_process`, what ragapp does on a
CPU), same prompts, same run.

The prompts are the RAG prompts of generation_throughput.py (ragapp's docs ingested, questions from their
headings). Each placement runs `--runs` times, alternating, every time in a fresh process that loads the
engine and generates the whole set twice (the first pass prepares the engine's kernels for the batch
shapes). Reported per placement, median over runs: seconds to load, tokens/s of the second pass, and the
CPU seconds of the whole process tree for loading and for that pass. Greedy float32 outputs must agree.

    .venv/bin/python benchmarks/vllm_engine_placement.py [--runs 3] [--prompts 16] [--max-new-tokens 48]

Not a test: the ratios are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_cpu import cpu_name
from generation_throughput import build_prompts, run_worker

PLACEMENTS = {"engine processes (vLLM default)": "1", "in this process (ragapp on CPU)": "0"}


def tree_cpu() -> float:
    """CPU seconds of this process and every live process below it."""
    import psutil

    me = psutil.Process()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    prompts = build_prompts(args.prompts, args.max_new_tokens)
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PLACEMENTS}
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; OMP_NUM_THREADS {threads}")
        print(f"{len(prompts)} RAG prompts × {args.max_new_tokens} new tokens, float32 greedy, {args.runs} runs")
        for _ in range(args.runs):
            for placement in PLACEMENTS:
                results[placement].append(measure(placement, prompts_file, args.max_new_tokens))

    def median(placement: str, key: str) -> float:
        return statistics.median(r[key] for r in results[placement])

    base, fast = PLACEMENTS
    print(f"\nmedian of {args.runs} runs   {'baseline':>10} {'in-process':>11}  ratio")
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
