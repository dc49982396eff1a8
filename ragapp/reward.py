"""A pairwise reward model (Bradley–Terry): an encoder with a one-number head, trained to score the
preferred completion of a prompt above the rejected one.

Training minimises −log σ(r_chosen − r_rejected), so only score differences matter: a score means
nothing on its own, but it ranks answers to the same prompt. Rankings of several completions become
every preferred-first pair; ties give no pair. Pairs are split by prompt, so the held-out accuracy is
measured on prompts the model never saw. The saved folder is what `reward.model` points to
(`ragapp eval run` adds a `reward` metric, `ragapp ask --best-of N` keeps the best-scored answer).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragapp.errors import UsageError
from ragapp.finetune import check_out, staged
from ragapp.training_data import Record, TrainingDataError, read_records, split, write_jsonl

REPORT_FILE = "ragapp-reward.json"
SPLITS = ("train", "validation", "test")
HEAD_LR_FACTOR = 10


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    line: int  # 1-based line of the training file it came from


@dataclass
class Rankings:
    pairs: list[Pair]
    notes: list[str]  # lines, or parts of lines, that gave no comparison
    prompts: list[str]  # distinct prompts with at least one pair, in file order


# -- reading --------------------------------------------------------------------------------------


def _ranked(record: Record) -> list[tuple[str, int]]:
    """(text, rank) of each completion; a list of strings is ranked best first."""
    completions = record.data["completions"]
    if not isinstance(completions, list):
        raise record.error(f"`completions` must be a list, not {type(completions).__name__}")
    if not completions:
        raise record.error("`completions` is empty")
    as_text = isinstance(completions[0], str)  # the first completion decides the shape of all
    out: list[tuple[str, int]] = []
    for i, c in enumerate(completions, 1):
        if as_text and isinstance(c, str):
            text, rank = c, i
        elif not as_text and isinstance(c, dict):
            text, rank = c.get("text"), c.get("rank")
            if not isinstance(text, str):
                raise record.error(f"completion {i} needs `text` (a string)")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise record.error(f"completion {i} needs `rank`, a positive integer (1 = best), not {rank!r}")
        else:
            shape = "a string or {text, rank}" if i == 1 else ("a string" if as_text else "{text, rank}")
            raise record.error(
                f"completion {i} must be {shape}{' like completion 1' if i > 1 else ''}, not {type(c).__name__} "
                "(all strings, ranked best first, or all {text, rank})"
            )
        if not text.strip():
            raise record.error(f"completion {i} is empty")
        out.append((text, rank))
    seen: dict[str, int] = {}
    for i, (text, _) in enumerate(out, 1):
        if text in seen:
            raise record.error(f"completion {i} repeats completion {seen[text]}")
        seen[text] = i
    return out


def _line_pairs(record: Record) -> tuple[list[Pair], str | None, int]:
    """Every preferred-first pair of one line, a note when the line gives none, and its count of tied pairs."""
    d = record.data
    if "completions" in d and ("chosen" in d or "rejected" in d):
        raise record.error("give either `completions` or `chosen`/`rejected`, not both")
    prompt = str(record.text("prompt"))
    if "completions" not in d:
        if "chosen" not in d and "rejected" not in d:
            raise record.error("unknown shape: expected `completions` (a ranking) or `chosen` and `rejected`")
        chosen, rejected = str(record.text("chosen")), str(record.text("rejected"))
        if chosen == rejected:
            raise record.error("`chosen` and `rejected` are the same text")
        return [Pair(prompt, chosen, rejected, record.line)], None, 0
    ranked = _ranked(record)
    if len(ranked) == 1:
        return [], f"{record.where}: only one completion, no comparison", 0
    if len({rank for _, rank in ranked}) == 1:
        return [], f"{record.where}: all completions tied, no comparison", 0
    ordered = sorted(ranked, key=lambda c: c[1])  # stable: equal ranks keep their order
    pairs, ties = [], 0
    for i, (better, better_rank) in enumerate(ordered):
        for worse, worse_rank in ordered[i + 1 :]:
            if better_rank == worse_rank:
                ties += 1
            else:
                pairs.append(Pair(prompt, better, worse, record.line))
    return pairs, None, ties


def read_rankings(path: str | Path) -> Rankings:
    """Pairs from a JSONL file of rankings or chosen/rejected pairs; a malformed line stops with file:line.

    Lines that give no pair get a note each; tied pairs inside otherwise ordered rankings get one note in all.
    """
    pairs: list[Pair] = []
    notes: list[str] = []
    tied: dict[int, int] = {}
    for record in read_records(path):
        got, note, ties = _line_pairs(record)
        pairs += got
        notes += [note] if note else []
        if ties:
            tied[record.line] = ties
    if tied:
        lines = ", ".join(map(str, list(tied)[:10])) + (", …" if len(tied) > 10 else "")
        n = sum(tied.values())
        notes.append(
            f"{path}: {n} tied pair{'s' if n > 1 else ''} (line{'s' if len(tied) > 1 else ''} {lines}) "
            "give no comparison"
        )
    if not pairs:
        raise TrainingDataError(f"{path}: no comparison at all (every line has a single or only tied completions)")
    return Rankings(pairs, notes, list(dict.fromkeys(p.prompt for p in pairs)))


def split_pairs(rankings: Rankings, validation: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, list[Pair]]:
    """Train/validation/test by prompt: all pairs of a prompt on one side, or held-out accuracy would leak."""
    parts = split(rankings.prompts, lambda prompt: prompt, validation, test, seed)
    side = {prompt: name for name in SPLITS for prompt in getattr(parts, name)}
    out: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in rankings.pairs:
        out[side[pair.prompt]].append(pair)
    return out


# -- model ----------------------------------------------------------------------------------------


def _load(path: Path) -> tuple[Any, Any]:
    """Tokenizer and one-output sequence classifier from a local folder (the head is new for a base encoder)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a model folder (no config.json)")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is the point here, not a warning
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: cannot load it as a reward model ({exc})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:  # decoder-only bases
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _rewards(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int) -> Any:
    """One score per (prompt, completion), encoded as a text pair; gradients flow if the caller allows them."""
    batch = tokenizer(
        list(prompts), list(completions), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    return model(**batch).logits.squeeze(-1)


def _margins(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_length: int) -> Any:
    """r_chosen − r_rejected for each pair, chosen and rejected scored in one batch."""
    r = _rewards(
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


# -- training -------------------------------------------------------------------------------------


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
    tokenizer, model = _load(base_path)
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


# -- scoring --------------------------------------------------------------------------------------


class RewardModel:
    """A trained reward model folder, loaded for scoring (eval mode, no gradients)."""

    def __init__(self, path: Path, model: Any, tokenizer: Any, info: dict[str, Any]):
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_length = int(info.get("max_length", 256))

    @property
    def model_id(self) -> str:
        return str(self.path)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise UsageError(f"reward model not found: {folder}")
        if not (folder / REPORT_FILE).is_file():
            raise UsageError(
                f"{folder} is not a ragapp reward model (no {REPORT_FILE}); train one with `ragapp reward train`"
            )
        try:
            info = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{folder / REPORT_FILE}: unreadable ({exc})") from None
        if not isinstance(info, dict):
            raise UsageError(f"{folder / REPORT_FILE}: expected a JSON object")
        tokenizer, model = _load(folder)
        model.eval()
        return cls(folder.resolve(), model, tokenizer, info)

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 32) -> list[float]:
        """How good each completion is as an answer to its prompt; comparable across completions of a prompt."""
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        # similar lengths together: less padding
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
        scores = [0.0] * len(order)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                r = _rewards(
                    self.model,
                    self.tokenizer,
                    [prompts[i] for i in idx],
                    [completions[i] for i in idx],
                    self.max_length,
                )
                for i, value in zip(idx, r.tolist(), strict=True):
                    scores[i] = float(value)
        return scores

    def score_one(self, prompt: str, completion: str) -> float:
        return self.score([prompt], [completion])[0]


@functools.lru_cache(maxsize=2)
def load_reward_model(path: str) -> RewardModel:
    """One loaded reward model per folder per process, shared by every App."""
    return RewardModel.load(path)
