"""Training a pairwise reward model (Bradley–Terry): an encoder with a one-number head, trained to score
the preferred completion of a prompt above the rejected one.

Training minimises −log σ(r_chosen − r_rejected), so only score differences matter. Pairs come from
`ragapp.preferences` (rankings become every preferred-first pair) and are split by prompt, so the
held-out accuracy is measured on prompts the model never saw. The saved folder is what `reward.model`
points to and `ragapp.reward` scores with (`ragapp eval run` adds a `reward` metric, `ragapp ask
--best-of N` keeps the best-scored answer).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragapp.errors import UsageError
from ragapp.preferences import SPLITS, Pair, read_rankings, split_pairs
from ragapp.reward import REPORT_FILE, load_classifier, rewards
from ragapp.training import check_out, staged
from ragapp.training_data import write_jsonl

HEAD_LR_FACTOR = 10


def _margins(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_length: int) -> Any:
    """r_chosen − r_rejected for each pair, chosen and rejected scored in one batch."""
    r = rewards(
        model,
        tokenizer,
        [p.prompt for p in pairs] * 2,
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        max_length,
    )
    return r[: len(pairs)] - r[len(pairs) :]


def _evaluate(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_length: int, batch_size: int) -> dict[str, float]:
    """Mean pairwise loss and the share of pairs with r_chosen > r_rejected (a tie counts as wrong)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    losses, wins = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            margin = _margins(model, tokenizer, chunk, max_length)
            losses += float(-F.logsigmoid(margin).sum())
            wins += int((margin > 0).sum())
    return {"loss": losses / len(pairs), "accuracy": wins / len(pairs)}


@dataclass
class RewardReport:
    base: str
    out: str
    max_length: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    pairs: dict[str, int]
    prompts: dict[str, int]
    steps: int
    seconds_per_step: float
    seconds: float
    train_loss: list[float] = field(default_factory=list)  # mean per epoch; ln 2 ≈ 0.693 is chance
    validation_loss: list[float] = field(default_factory=list)  # after each epoch
    validation_accuracy: list[float] = field(default_factory=list)  # pair accuracy after each epoch
    test_loss_before: float | None = None
    test_loss_after: float | None = None
    test_accuracy_before: float | None = None  # the untrained model (random head), for comparison
    test_accuracy_after: float | None = None
    notes: list[str] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _base_path(base: str | Path | None) -> Path:
    if base is None or str(base) == "":
        from ragapp.embedding import shipped_model_path

        return shipped_model_path()
    path = Path(base).expanduser()
    if not path.exists():
        raise UsageError(f"base model not found: {path}")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a model folder (no config.json); --base takes a Hugging Face model folder")
    return path.resolve()


def _schedule(step: int, total: int) -> float:
    """Linear warm-up over the first tenth of the steps, then linear decay to zero."""
    warmup = max(1, total // 10)
    return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def train_reward(
    path: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 256,
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    overwrite: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> RewardReport:
    """Train a reward model on the rankings in `path`, starting from `base` (default: the shipped MiniLM)."""
    if epochs < 1 or batch_size < 1 or max_length < 8 or not lr > 0:
        raise UsageError("epochs and batch size must be at least 1, max length at least 8, the learning rate > 0")
    out = check_out(out, overwrite)
    base_path = _base_path(base)
    started = time.perf_counter()
    rankings = read_rankings(path)
    for message in rankings.notes:
        (on_note or (lambda _m: None))(message)
    parts = split_pairs(rankings, validation, test, seed)
    train, val, held = parts["train"], parts["validation"], parts["test"]

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    torch.manual_seed(seed)  # the new head's weights, then the order of the pairs
    tokenizer, model = load_classifier(base_path)
    before = _evaluate(model, tokenizer, held, max_length, batch_size) if held else None
    body = {id(p) for p in model.base_model.parameters()}
    head = [p for p in model.parameters() if id(p) not in body]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.base_model.parameters()), "lr": lr},
            {"params": head, "lr": lr * HEAD_LR_FACTOR},  # new weights: at `lr` they would barely move in a few steps
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, total))
    order = torch.Generator().manual_seed(seed)
    train_loss: list[float] = []
    val_loss: list[float] = []
    val_accuracy: list[float] = []
    step_seconds = 0.0
    with tqdm(total=epochs * len(train), unit="pair", desc="reward", disable=not progress, dynamic_ncols=True) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            losses = []
            for idx in torch.randperm(len(train), generator=order).split(batch_size):
                chunk = [train[i] for i in idx.tolist()]
                mark = time.perf_counter()
                loss = -F.logsigmoid(_margins(model, tokenizer, chunk, max_length)).mean()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step_seconds += time.perf_counter() - mark
                losses.append(loss.item())
                bar.update(len(chunk))
                bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch)
            train_loss.append(sum(losses) / len(losses))
            if val:
                metrics = _evaluate(model, tokenizer, val, max_length, batch_size)
                val_loss.append(metrics["loss"])
                val_accuracy.append(metrics["accuracy"])
                if progress:
                    bar.write(
                        f"epoch {epoch}: train loss {train_loss[-1]:.4f}, validation loss {metrics['loss']:.4f}, "
                        f"pair accuracy {metrics['accuracy']:.3f}"
                    )
    after = _evaluate(model, tokenizer, held, max_length, batch_size) if held else None

    report = RewardReport(
        base=str(base_path),
        out=str(out),
        max_length=max_length,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        pairs={name: len(parts[name]) for name in SPLITS},
        prompts={name: len({p.prompt for p in parts[name]}) for name in SPLITS},
        steps=total,
        seconds_per_step=step_seconds / total,
        seconds=0.0,
        train_loss=train_loss,
        validation_loss=val_loss,
        validation_accuracy=val_accuracy,
        test_loss_before=before["loss"] if before else None,
        test_loss_after=after["loss"] if after else None,
        test_accuracy_before=before["accuracy"] if before else None,
        test_accuracy_after=after["accuracy"] if after else None,
        notes=list(rankings.notes),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    with staged(out) as staging:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        (staging / "data").mkdir()
        for name in SPLITS:
            rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in parts[name]]
            write_jsonl(staging / "data" / f"{name}.jsonl", rows)
        report.seconds = time.perf_counter() - started
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        mode = staging.stat().st_mode & 0o666  # the weights are written 0600; readable like the rest of the folder
        for file in staging.rglob("*"):
            if file.is_file():
                file.chmod(mode)
    return report
