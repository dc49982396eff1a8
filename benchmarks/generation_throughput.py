"""Batch generation throughput: the vLLM backend against the transformers backend, same prompts, same run.

The prompts are real RAG prompts: ragapp's own docs are ingested into a temporary workspace and 32
questions made from their headings are retrieved and fitted exactly as `ragapp ask` does. Every
(backend, dtype) runs in a fresh process of its own, loads the model, warms up on two prompts, then
generates the whole set `--runs` times; the median tokens/s is reported. The baseline is the transformers
backend at its best batch size (the whole set in one call, or batches of 8). Greedy decoding, no stop
strings, so both backends do the same work; in float32 their outputs are compared as well.

    .venv/bin/python benchmarks/generation_throughput.py [--runs 3] [--dtypes float32,bfloat16]

Not a test: the goal (vLLM ≥ 5× transformers) is printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL = 5.0


def questions(n: int) -> list[str]:
    """Distinct questions from the docs' section headings, in a fixed order."""
    seen: list[str] = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"##+\s+(.+)", line)
            if match:
                heading = match.group(1).strip().strip("`\"'")
                q = heading if heading.endswith("?") else f"What should I know about {heading[0].lower()}{heading[1:]}?"
                if q not in seen:
                    seen.append(q)
    return seen[:n]


def build_prompts(n: int, max_new_tokens: int) -> list[list[dict[str, str]]]:
    from ragapp import App
    from ragapp.generators.transformers_local import TransformersGenerator
    from ragapp.prompt import fit_prompt

    counter = TransformersGenerator()  # only its tokenizer is used, to fit the passages
    with tempfile.TemporaryDirectory() as tmp:
        app = App(Path(tmp) / "ws")
        app.ingest([ROOT / "docs"])
        prompts = []
        for q in questions(n):
            messages, _ = fit_prompt(counter, app.config.prompt, q, app.search(q, 4), 2048 - max_new_tokens)
            prompts.append(messages)
        app.close()
    return prompts


def worker(backend: str, dtype: str, batch: int, prompts_file: str, runs: int, max_new_tokens: int) -> None:
    """One configuration in this process; prints one JSON line."""
    from ragapp.generators.base import GenerationConfig

    prompts = json.loads(Path(prompts_file).read_text())
    started = time.perf_counter()
    if backend == "vllm":
        from ragapp.generators.vllm_local import VllmGenerator

        gen: Any = VllmGenerator(dtype=dtype).load()
    else:
        from ragapp.generators.transformers_local import TransformersGenerator

        gen = TransformersGenerator(dtype=dtype).load()
    load_s = time.perf_counter() - started
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop=[])
    gen.generate_batch(prompts[:2], config)  # warm-up: first-call allocations are not throughput
    seconds, tokens, outputs = [], [], []
    for _ in range(runs):
        mark = time.perf_counter()
        outputs = [
            text for i in range(0, len(prompts), batch) for text in gen.generate_batch(prompts[i : i + batch], config)
        ]
        seconds.append(time.perf_counter() - mark)
        tokens.append(sum(gen.text_tokens(t) for t in outputs))
    prompt_tokens = [gen.count_tokens(p) for p in prompts]
    gen.close()
    print(json.dumps({"load_s": load_s, "seconds": seconds, "tokens": tokens, "outputs": outputs,
                      "prompt_tokens": prompt_tokens}))  # fmt: skip


def run_worker(cmd: list[str], what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A measurement in a fresh process: the last JSON line it prints."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def measure(backend: str, dtype: str, batch: int, prompts_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", backend, dtype, str(batch), str(prompts_file),
           "--runs", str(args.runs), "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    result = run_worker(cmd, f"{backend} {dtype}")
    rates = [t / s for t, s in zip(result["tokens"], result["seconds"], strict=True)]
    result.update(backend=backend, dtype=dtype, batch=batch, rates=rates, median=statistics.median(rates))
    print(f"  {backend:12} {dtype:8} batch {batch:>2}: {', '.join(f'{r:.1f}' for r in rates)} tokens/s "
          f"(load {result['load_s']:.0f} s)", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="Also write every measurement here.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    prompts = build_prompts(args.prompts, args.max_new_tokens)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        print(f"{len(prompts)} RAG prompts × {args.max_new_tokens} new tokens, {args.runs} runs each", flush=True)
        for dtype in args.dtypes.split(","):
            for backend, batch in (("transformers", len(prompts)), ("transformers", 8), ("vllm", len(prompts))):
                results.append(measure(backend, dtype, batch, prompts_file, args))

    mean_prompt = statistics.mean(results[0]["prompt_tokens"])
    print(f"\nprompts: {len(prompts)}, mean prompt {mean_prompt:.0f} tokens; median of {args.runs} runs\n")
    print(f"{'dtype':9} {'transformers (best batch)':>26} {'vLLM':>10} {'vLLM / transformers':>20}  goal ≥ {GOAL:g}×")
    for dtype in args.dtypes.split(","):
        base = max(
            (r for r in results if r["dtype"] == dtype and r["backend"] == "transformers"), key=lambda r: r["median"]
        )
        fast = next(r for r in results if r["dtype"] == dtype and r["backend"] == "vllm")
        ratio = fast["median"] / base["median"]
        verdict = "met" if ratio >= GOAL else "not met"
        line = f"{base['median']:>15.1f} tok/s (b{base['batch']:>2}) {fast['median']:>6.1f} tok/s {ratio:>19.2f}×"
        print(f"{dtype:9} {line}  {verdict}")
        if dtype == "float32":
            same = sum(a == b for a, b in zip(base["outputs"], fast["outputs"], strict=True))
            print(f"{'':9} float32 greedy outputs identical: {same}/{len(prompts)}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        w = argparse.ArgumentParser()
        w.add_argument("backend")
        w.add_argument("dtype")
        w.add_argument("batch", type=int)
        w.add_argument("prompts_file")
        w.add_argument("--runs", type=int, default=3)
        w.add_argument("--max-new-tokens", type=int, default=64)
        a = w.parse_args(sys.argv[2:])
        worker(a.backend, a.dtype, a.batch, a.prompts_file, a.runs, a.max_new_tokens)
    else:
        main()
