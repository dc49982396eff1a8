"""LoRA fine-tuning step time on a CPU: TRL's LM head scoring every position (the baseline, TRL's own
behaviour off CUDA) against scoring only the labelled answer tokens (`labelled_positions_only`, what
`ragapp finetune` and `ragapp align` use), same batches, same run.

The examples are RAG prompts as `ragapp finetune` builds them: ragapp's docs/ is ingested into a temporary
workspace, and each question of tests/data/docs_sft.jsonl is prompted with its retrieved passages, then
paired with its reference answer. One step = forward and backward of one batch; the median over `--runs`
rounds of all batches is reported, with the loss of each mode (they must agree).

    .venv/bin/python benchmarks/finetune_cpu.py [--runs 3] [--batches 2] [--batch-size 4] [-k 1]

Not a test: the ratio is printed, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragapp.app import App
from ragapp.finetune import read_examples, sft_trainer
from ragapp.training import labelled_positions_only, load_base

sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("-k", type=int, default=1, help="passages per prompt")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="ragapp-bench-") as tmp:
        app = App(Path(tmp) / "ws", config={"retrieval": {"k": args.k}})
        app.ingest([ROOT / "docs"], progress=False)
        base, tokenizer = load_base(None)
        examples = read_examples(ROOT / "tests" / "data" / "docs_sft.jsonl", None, app.prompt_messages)
        n = args.batches * args.batch_size
        trainer = sft_trainer(base, tokenizer, examples[:n], [], "lora", 8, tmp, 1, args.batch_size, 1e-4, 0)
        trainer.model.eval()  # no dropout: both modes compute the same function
        rows = [trainer.train_dataset[i] for i in range(n)]
        batches = [trainer.data_collator(rows[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]
        positions = sum(b["labels"][:, 1:].numel() for b in batches)
        labelled = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)

        def one_round() -> tuple[float, float]:
            started, loss_sum = time.perf_counter(), 0.0
            for batch in batches:
                trainer.model.zero_grad()
                loss = trainer.compute_loss(trainer.model, dict(batch))
                loss.backward()
                loss_sum += loss.item()
            return (time.perf_counter() - started) / len(batches), loss_sum / len(batches)

        modes = {
            "every position (TRL off CUDA)": contextlib.nullcontext,
            "labelled only (ragapp)": labelled_positions_only,
        }
        seconds: dict[str, list[float]] = {name: [] for name in modes}
        losses: dict[str, float] = {}
        for _ in range(args.runs):
            for name, mode in modes.items():
                with mode():
                    s, loss = one_round()
                seconds[name].append(s)
                losses[name] = loss

    print(f"CPU: {cpu_name()}; torch threads: {torch.get_num_threads()}")
    print(f"{n} examples in batches of {args.batch_size}: {positions} positions, {labelled} of them labelled")
    base_name, ours = modes
    for name in modes:
        print(f"{name:32s} {statistics.median(seconds[name]):6.2f} s per step (median of {args.runs}), "
              f"loss {losses[name]:.5f}")  # fmt: skip
    ratio = statistics.median(seconds[base_name]) / statistics.median(seconds[ours])
    print(f"speed-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
