"""What fine-tuning, reward training and alignment share: the output folder, the base model, the trainer.

An output folder is written beside its destination and renamed into place (`staged`), so an interrupted
run leaves no half-written model. The trainer settings are the same for SFT and DPO: CPU unless CUDA is
there, no checkpoints, ragapp's own progress bar. torch, transformers and datasets are imported inside
the functions: importing this module loads none of them.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragapp.errors import UsageError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the attention projections of the Llama family


def check_out(out: str | Path, overwrite: bool) -> Path:
    """`out` as a path, refused if it holds anything and `overwrite` is off."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    return out


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` that replaces it only if the block finishes; removed otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the model folder's mode
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_base(base: str | None) -> tuple[Path, Any]:
    """The base model's folder (a GGUF is converted once) and its tokenizer."""
    import datasets
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ragapp.generators.gguf import resolve_model

    path = resolve_model(base)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()  # trl's per-split tokenizing bars; ragapp shows one bar for training
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return path, tokenizer


@contextmanager
def labelled_positions_only() -> Iterator[None]:
    """Make TRL's fused LM head score only the labelled positions on a CPU, as it already does on CUDA.

    Elsewhere than CUDA/XPU, TRL projects every position (prompt and padding too) onto the vocabulary so that
    tile shapes stay fixed for graph compilers; nothing is compiled on a CPU, where that costs time for nothing.
    Unlabelled positions count zero either way, so losses and gradients are the same (tests/test_finetune.py);
    a LoRA step on RAG prompts took 1.5x less time (benchmarks/finetune_cpu.py). The switch is TRL's module
    global, set for the process while the block runs; nothing happens if a TRL release no longer has it.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def load_causal_lm(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)


def trainer_args(
    scratch: str, epochs: int, batch_size: int, learning_rate: float, seed: int, evaluate: bool
) -> dict[str, Any]:
    """What SFT and DPO training share: CPU unless CUDA is there, no checkpoints, ragapp's own progress bar."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": scratch,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "logging_steps": 1,
        "eval_strategy": "epoch" if evaluate else "no",
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,  # small models on CPU: checkpointing costs ~40 % more time per step
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def _progress_callback(enabled: bool, desc: str) -> Any:
    """A bar with steps, rate and the running loss; validation loss printed after each epoch."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = tqdm(total=state.max_steps, unit="step", desc=desc, disable=not enabled)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" in logs and self.bar is not None:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}", epoch=f"{state.epoch:.2f}")
            if "eval_loss" in logs and enabled and self.bar is not None:
                self.bar.write(f"epoch {round(state.epoch or 0)}: validation loss {logs['eval_loss']:.4f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return Progress()


def use_progress(trainer: Any, enabled: bool, desc: str) -> None:
    """Replace transformers' own bar and printed logs with one bar named `desc`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_progress_callback(enabled, desc))


@dataclass
class TrainingTimes:
    steps: int
    seconds_per_step: float
    epoch_evals: list[dict[str, Any]]  # the evaluation logged after each epoch
    history: list[dict[str, Any]]

    def epoch_means(self, key: str, epochs: int) -> list[float]:
        """The mean of logged `key` (such as "loss") over each epoch's steps."""
        out = []
        for epoch in range(1, epochs + 1):
            values = [h[key] for h in self.history if key in h and epoch - 1 < h.get("epoch", 0) <= epoch + 1e-9]
            if values:
                out.append(statistics.fmean(values))
        return out


def training_times(trainer: Any, result: Any) -> TrainingTimes:
    """Steps and seconds per step of `train()`, the per-epoch evaluations left out."""
    history = trainer.state.log_history  # of `train()` only: it starts a fresh state
    epoch_evals = [h for h in history if "eval_loss" in h and (h.get("epoch") or 0) > 0]
    seconds = float(result.metrics.get("train_runtime", 0.0)) - sum(h.get("eval_runtime", 0.0) for h in epoch_evals)
    steps = int(trainer.state.global_step)
    return TrainingTimes(steps, seconds / steps if steps else math.nan, epoch_evals, history)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(trainable), int(sum(p.numel() for p in model.parameters()))


def save_model(model: Any, tokenizer: Any, folder: Path, merge: bool) -> str | None:
    """The trained model (adapter or full) into `folder`, and base+LoRA merged into `folder/merged` if asked."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not merge:
        return None
    merged = model.merge_and_unload()
    merged.save_pretrained(folder / "merged")
    tokenizer.save_pretrained(folder / "merged")
    return "merged"
