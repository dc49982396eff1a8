"""Preference alignment with DPO (trl `DPOTrainer`): a LoRA adapter trained on chosen/rejected pairs.

DPO needs no reward model: the policy is pushed to prefer the chosen completion over the rejected one
more than a frozen reference does, with β setting how far it may drift from that reference (the KL
penalty's strength). The reference is the base model itself (the adapter switched off), so to align
a fine-tuned model, merge it first (`ragapp finetune --merge`) and pass the merged folder as `--base`.

trl 1.x no longer ships PPO (its RL trainers are GRPO and RLOO, driven by reward functions), so PPO
with the reward model is not offered.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragapp.errors import UsageError
from ragapp.preferences import Pair, read_rankings, split_pairs
from ragapp.training import (
    LORA_TARGETS,
    check_out,
    labelled_positions_only,
    load_base,
    load_causal_lm,
    parameter_counts,
    save_model,
    staged,
    trainer_args,
    training_times,
    use_progress,
)
from ragapp.training_data import write_jsonl

METHODS = ("dpo",)
REPORT_FILE = "ragapp-align.json"


@dataclass
class AlignReport:
    method: str
    base: str
    out: str
    merged: str | None
    beta: float
    pairs: dict[str, int]
    trainable_params: int
    total_params: int
    epochs: int
    steps: int
    seconds_per_step: float
    seconds: float
    train_loss: list[float] = field(default_factory=list)  # mean per epoch; ln 2 ≈ 0.693 before training
    validation_loss: list[float] = field(default_factory=list)  # after each epoch
    validation_accuracy: list[float] = field(default_factory=list)  # reward accuracy after each epoch
    test: dict[str, float] = field(default_factory=dict)  # held-out DPO loss, reward accuracy and margin
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dataset(pairs: Sequence[Pair]) -> Any:
    from datasets import Dataset

    def turn(role: str, text: str) -> list[dict[str, str]]:
        return [{"role": role, "content": text}]

    return Dataset.from_list(
        [
            {
                "prompt": turn("user", p.prompt),
                "chosen": turn("assistant", p.chosen),
                "rejected": turn("assistant", p.rejected),
            }
            for p in pairs
        ]
    )


def align(
    data: str | Path,
    out: str | Path,
    method: str = "dpo",
    base: str | None = None,
    beta: float = 0.1,
    epochs: int = 3,
    learning_rate: float = 5e-5,
    batch_size: int = 4,
    rank: int = 8,
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    merge: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> AlignReport:
    """Align `base` on preference pairs (or rankings, turned into pairs); save a LoRA adapter into `out`.

    Pairs are split by prompt, so no held-out prompt was seen in training.
    """
    if method not in METHODS:
        raise UsageError(f"unknown alignment method {method!r} (available: {', '.join(METHODS)})")
    if not beta > 0:
        raise UsageError(f"beta must be positive, got {beta}")
    out = check_out(out, overwrite)
    note = on_note or (lambda _message: None)
    started = time.perf_counter()
    base_path, tokenizer = load_base(base)

    rankings = read_rankings(data)
    for message in rankings.notes:
        note(message)
    by_split = split_pairs(rankings, validation, test, seed)

    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    with (
        staged(out) as staging,
        tempfile.TemporaryDirectory(prefix="ragapp-dpo-") as scratch,
        labelled_positions_only(),
    ):
        config = DPOConfig(
            **trainer_args(scratch, epochs, batch_size, learning_rate, seed, evaluate=bool(by_split["validation"])),
            beta=beta,
            max_length=None,
        )
        trainer = DPOTrainer(
            model=load_causal_lm(base_path),
            args=config,
            train_dataset=_dataset(by_split["train"]),
            eval_dataset=_dataset(by_split["validation"]) if by_split["validation"] else None,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
            ),
        )
        use_progress(trainer, progress, "align")
        times = training_times(trainer, trainer.train())
        held: dict[str, float] = {}
        if by_split["test"]:
            metrics = trainer.evaluate(_dataset(by_split["test"]), metric_key_prefix="test")
            logged = trainer.state.log_history[-1]  # trl logs its DPO metrics with an "eval_" prefix
            held = {
                "loss": metrics["test_loss"],
                # share of held-out pairs whose implicit reward β·log(π/π_ref) ranks chosen above rejected
                "reward_accuracy": logged.get("eval_rewards/accuracies", float("nan")),
                "reward_margin": logged.get("eval_rewards/margins", float("nan")),
            }
        trainable, total = parameter_counts(trainer.model)
        merged = save_model(trainer.model, tokenizer, staging, merge)
        (staging / "data").mkdir()
        for name, pairs in by_split.items():
            rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
            write_jsonl(staging / "data" / f"{name}.jsonl", rows)
        report = AlignReport(
            method=method,
            base=str(base_path),
            out=str(out),
            merged=str(out / merged) if merged else None,
            beta=beta,
            pairs={name: len(pairs) for name, pairs in by_split.items()},
            trainable_params=trainable,
            total_params=total,
            epochs=epochs,
            steps=times.steps,
            seconds_per_step=times.seconds_per_step,
            seconds=0.0,
            train_loss=times.epoch_means("loss", epochs),
            validation_loss=[h["eval_loss"] for h in times.epoch_evals],
            validation_accuracy=[h.get("eval_rewards/accuracies", float("nan")) for h in times.epoch_evals],
            test=held,
            notes=list(rankings.notes),
        )
        report.seconds = time.perf_counter() - started
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
