"""Supervised fine-tuning (trl `SFTTrainer` + peft): LoRA, soft-prompt tuning or all weights.

Every example becomes a chat (prompt messages + the assistant's completion) rendered with the base
model's chat template, because that is how every ragapp backend prompts the model; the loss covers
the completion tokens only. Question/answer lines (the `ragapp eval run` format) are turned into the
very prompt `ragapp ask` builds from the workspace, so the model is trained on the task it will do.

The output folder is what the backends load: a LoRA adapter (`generation.adapter`, `model serve --lora`),
a soft prompt (transformers backend), or a full model folder (`generation.model`). It is written
beside its destination and renamed into place, so an interrupted run leaves no half-written model.
"""

from __future__ import annotations

import json
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragapp.errors import UsageError
from ragapp.generators.base import Message
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
from ragapp.training_data import Record, TrainingDataError, read_records, split, write_jsonl

if TYPE_CHECKING:
    from ragapp.app import App

METHODS = ("lora", "prompt-tuning", "full")
LEARNING_RATES = {"lora": 2e-4, "prompt-tuning": 3e-2, "full": 2e-5}
REPORT_FILE = "ragapp-finetune.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Template:
    prompt: str
    completion: str
    system: str | None = None


@dataclass
class SftExample:
    line: int
    task: str
    prompt: list[Message]
    completion: str
    row: dict[str, Any]  # the line as read, written back into the split files


def read_templates(path: str | Path) -> dict[str, Template]:
    """`[tasks.NAME]` tables with `prompt` and `completion` (and optional `system`) format strings."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"templates file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: not a readable TOML file ({exc})") from None
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise UsageError(f"{path}: expected [tasks.NAME] tables with `prompt` and `completion`")
    out = {}
    for name, table in tasks.items():
        if not isinstance(table, dict) or not all(isinstance(table.get(k), str) for k in ("prompt", "completion")):
            raise UsageError(f"{path}: [tasks.{name}] needs `prompt` and `completion` strings")
        unknown = set(table) - {"prompt", "completion", "system"}
        if unknown:
            raise UsageError(f"{path}: [tasks.{name}] has unknown keys: {', '.join(sorted(unknown))}")
        out[name] = Template(table["prompt"], table["completion"], table.get("system"))
    return out


def _fill(record: Record, template: str, what: str) -> str:
    try:
        text = template.format_map(record.data)
    except KeyError as exc:
        raise record.error(f"the {what} template needs field `{exc.args[0]}`, which this line lacks") from None
    except (ValueError, IndexError) as exc:
        raise TrainingDataError(f"template for {what}: {exc}") from None
    if not text.strip():
        raise record.error(f"the {what} is empty once the template is filled")
    return text


def _chat(record: Record) -> tuple[list[Message], str]:
    messages = record.data["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise record.error("`messages` must be a list of at least two messages (user, then assistant)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise record.error(f"message {i + 1} must be {{role: system|user|assistant, content: text}}")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise record.error("the last message must be the assistant's (non-empty): it is what the model learns")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise record.error("no user message before the assistant's")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]


def to_example(
    record: Record, templates: dict[str, Template] | None, rag_prompt: Callable[[str], list[Message]] | None
) -> SftExample:
    """One line in any accepted shape → prompt messages and completion."""
    d = record.data
    task = d.get("task", "default")
    if not isinstance(task, str):
        raise record.error("`task` must be a string")
    if templates is not None:
        if task not in templates:
            if len(templates) != 1 or "task" in d:
                raise record.error(f"task {task!r} has no template (templates: {', '.join(templates)})")
            task = next(iter(templates))
        t = templates[task]
        prompt: list[Message] = [{"role": "system", "content": t.system}] if t.system else []
        prompt.append({"role": "user", "content": _fill(record, t.prompt, "prompt")})
        return SftExample(record.line, task, prompt, _fill(record, t.completion, "completion"), d)
    if "messages" in d:
        prompt, completion = _chat(record)
        return SftExample(record.line, task, prompt, completion, d)
    if "prompt" in d or "completion" in d:
        system = record.text("system", required=False)
        prompt = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": str(record.text("prompt"))}
        ]
        return SftExample(record.line, task, prompt, str(record.text("completion")), d)
    if "instruction" in d:
        instruction, extra = str(record.text("instruction")), record.text("input", required=False)
        text = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return SftExample(record.line, task, [{"role": "user", "content": text}], str(record.text("output")), d)
    if "question" in d:
        answer = d.get("answer", d.get("reference"))
        if not isinstance(answer, str) or not answer.strip():
            raise record.error("a question needs its reference answer as `answer` (non-empty text)")
        if rag_prompt is None:
            raise record.error("question/answer lines are prompted with passages from a workspace; none given")
        return SftExample(record.line, task, rag_prompt(str(record.text("question"))), answer, d)
    raise record.error(
        "unknown shape: expected prompt/completion, messages, instruction/output or question/answer fields"
    )


def read_examples(
    path: str | Path,
    templates: dict[str, Template] | None = None,
    rag_prompt: Callable[[str], list[Message]] | None = None,
) -> list[SftExample]:
    return [to_example(r, templates, rag_prompt) for r in read_records(path)]


@dataclass
class FinetuneReport:
    method: str
    base: str
    out: str
    merged: str | None
    examples: dict[str, int]
    tasks: dict[str, int]
    trainable_params: int
    total_params: int
    epochs: int
    steps: int
    batch_size: int
    learning_rate: float
    seconds_per_step: float
    seconds: float
    train_loss: list[float] = field(default_factory=list)  # mean per epoch
    validation_loss: list[float] = field(default_factory=list)  # [before training, after epoch 1, ...]
    test_loss_before: float | None = None
    test_loss_after: float | None = None
    dropped: list[str] = field(default_factory=list)  # lines too long to train on

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trainable_share": self.trainable_share}


def split_by_task(
    examples: Sequence[SftExample], validation: float, test: float, seed: int
) -> tuple[list[SftExample], list[SftExample], list[SftExample]]:
    """Split each task on its own, so every task of a mix is represented in validation and test."""
    train: list[SftExample] = []
    val: list[SftExample] = []
    held: list[SftExample] = []
    tasks = sorted({e.task for e in examples})
    for task in tasks:
        group = [e for e in examples if e.task == task]
        s = split(group, lambda e: json.dumps(e.row, sort_keys=True, ensure_ascii=False), validation, test, seed)
        train += s.train
        val += s.validation
        held += s.test
    return train, val, held


def _dataset(examples: Sequence[SftExample]) -> Any:
    from datasets import Dataset

    rows = [{"prompt": e.prompt, "completion": [{"role": "assistant", "content": e.completion}]} for e in examples]
    return Dataset.from_list(rows)


def _peft_config(method: str, base_path: Path, rank: int) -> Any:
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit

    if method == "lora":
        return LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
        )
    if method == "prompt-tuning":
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=16,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text="Answer the question from the passages, briefly, citing them like [1].",
            tokenizer_name_or_path=str(base_path),
        )
    return None


def sft_trainer(
    base_path: Path,
    tokenizer: Any,
    train: Sequence[SftExample],
    validation: Sequence[SftExample],
    method: str,
    rank: int,
    scratch: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> Any:
    """trl's SFTTrainer on prompt/completion chats: only completion tokens count in the loss."""
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        **trainer_args(scratch, epochs, batch_size, learning_rate, seed, evaluate=bool(validation)),
        max_length=None,  # lengths are checked before; truncating would cut completions
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=load_causal_lm(base_path),
        args=config,
        train_dataset=_dataset(train),
        eval_dataset=_dataset(validation) if validation else None,
        processing_class=tokenizer,
        peft_config=_peft_config(method, base_path, rank),
    )


def finetune(
    data: str | Path,
    out: str | Path,
    method: str = "lora",
    base: str | None = None,
    app: App | None = None,
    templates: str | Path | None = None,
    epochs: int = 3,
    learning_rate: float | None = None,
    batch_size: int = 4,
    rank: int = 8,
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    max_length: int = 2048,
    merge: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> FinetuneReport:
    """Fine-tune `base` (default: the shipped SmolLM2) on `data`; save what the backends load into `out`.

    `app` supplies the workspace whose passages prompt question/answer lines (as `ragapp ask` would).
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if merge and method != "lora":
        raise UsageError("--merge applies to LoRA only: a soft prompt cannot be merged; full fine-tuning saves a model")
    if epochs < 1 or batch_size < 1 or not 1 <= rank <= 512:
        raise UsageError("epochs and batch size must be at least 1, and the LoRA rank from 1 to 512")
    out = check_out(out, overwrite)
    note = on_note or (lambda _message: None)
    started = time.perf_counter()
    base_path, tokenizer = load_base(base)  # a clear error for a missing model before anything heavy happens
    rag_prompt = (lambda q: app.prompt_messages(q)) if app is not None else None
    examples = read_examples(data, read_templates(templates) if templates else None, rag_prompt)
    kept, dropped = [], []
    for e in examples:
        chat = [*e.prompt, {"role": "assistant", "content": e.completion}]
        length = len(tokenizer.apply_chat_template(chat, return_dict=False))
        if length > max_length:
            dropped.append(f"{Path(data)}:{e.line}: {length} tokens, longer than --max-length {max_length}; skipped")
            note(dropped[-1])
        else:
            kept.append(e)
    if not kept:
        raise TrainingDataError(f"{data}: no example fits in {max_length} tokens")
    train, val, held = split_by_task(kept, validation, test, seed)

    lr = learning_rate if learning_rate is not None else LEARNING_RATES[method]
    with (
        staged(out) as staging,
        tempfile.TemporaryDirectory(prefix="ragapp-sft-") as scratch,
        labelled_positions_only(),
    ):
        trainer = sft_trainer(base_path, tokenizer, train, val, method, rank, scratch, epochs, batch_size, lr, seed)
        use_progress(trainer, progress, "finetune")
        test_set = _dataset(held) if held else None
        val_before = trainer.evaluate()["eval_loss"] if val else None
        test_before = trainer.evaluate(test_set, metric_key_prefix="test")["test_loss"] if test_set else None
        times = training_times(trainer, trainer.train())
        test_after = trainer.evaluate(test_set, metric_key_prefix="test")["test_loss"] if test_set else None
        trainable, total = parameter_counts(trainer.model)
        merged = save_model(trainer.model, tokenizer, staging, merge)

        split_dir = staging / "data"
        split_dir.mkdir()
        for name, part in (("train", train), ("validation", val), ("test", held)):
            write_jsonl(split_dir / f"{name}.jsonl", [e.row for e in part])
        tasks: dict[str, int] = {}
        for e in kept:
            tasks[e.task] = tasks.get(e.task, 0) + 1
        report = FinetuneReport(
            method=method,
            base=str(base_path),
            out=str(out),
            merged=str(out / merged) if merged else None,
            examples={"train": len(train), "validation": len(val), "test": len(held), "dropped": len(dropped)},
            tasks=tasks,
            trainable_params=trainable,
            total_params=total,
            epochs=epochs,
            steps=times.steps,
            batch_size=batch_size,
            learning_rate=lr,
            seconds_per_step=times.seconds_per_step,
            seconds=0.0,
            train_loss=times.epoch_means("loss", epochs),
            validation_loss=([val_before] if val_before is not None else [])
            + [h["eval_loss"] for h in times.epoch_evals],
            test_loss_before=test_before,
            test_loss_after=test_after,
            dropped=dropped,
        )
        report.seconds = time.perf_counter() - started
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
