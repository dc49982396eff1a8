"""Training the retriever's models on examples from `ragapp.retriever_data`: a cross-encoder reranker and
the bi-encoder that embeds chunks.

Both start from the shipped all-MiniLM-L6-v2 (or `--base`) and learn with multiple-negatives ranking
(InfoNCE): for each question the answering passage must score above the question's mined hard negatives and
every other passage in the batch. Questions, not pairs, are split, and the held-out ones measure the result
the way search uses it: the first stage's top passages reordered (MRR@10, before and after). For a reranker,
the same held-out questions choose the blend of its score with the first stage's rank, written into the
folder (`ragapp-reranker.json`) for search to use.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ragapp.errors import UsageError
from ragapp.reranker import META_FILE, blend, load_cross_encoder, pair_logits
from ragapp.retriever_data import Example
from ragapp.training import check_out, staged, trainer_args, training_times, use_progress
from ragapp.training_data import split, write_jsonl

BLENDS = tuple(round(0.1 * n, 1) for n in range(11))
HEAD_LR_FACTOR = 10  # the reranker's one-logit head starts from random weights: it learns this much faster
HEAD_PARAMETERS = r"(^|\.)\d+\.linear\.|classifier\."  # the new one-logit layer, or a classification head
IN_BATCH_NEGATIVES = 2  # other questions' passages scored per question, besides its own hard negatives
REPORT_FILE = "ragapp-training.json"


@dataclass
class RetrieverReport:
    kind: str  # reranker | embedder
    out: str
    base: str
    examples: dict[str, int]
    sources: dict[str, Any]
    epochs: int
    steps: int
    seconds: float
    seconds_per_step: float
    model_mb: float
    validation: dict[str, float] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mrr_at_10(scores: Sequence[np.ndarray], relevant: Sequence[np.ndarray]) -> float:
    """Mean reciprocal rank of the first relevant passage within the top 10 (0 when none is there)."""
    total = 0.0
    for score, rel in zip(scores, relevant, strict=True):
        order = np.argsort(-score, kind="stable")[:10]
        hits = np.flatnonzero(rel[order])
        total += 1.0 / (hits[0] + 1) if len(hits) else 0.0
    return total / max(len(scores), 1)


def choose_blend(scores: dict[float, float]) -> float:
    """The smallest weight among the best scoring: the reranker counts only as far as held-out questions show
    that it helps (a tie with the first stage alone is no evidence, and on a few questions ties are common)."""
    return max(scores, key=lambda w: (scores[w], -w))


def _rankings(examples: Sequence[Example]) -> list[Example]:
    """The held-out examples that can measure reordering: the answer is among the first stage's passages."""
    return [e for e in examples if any(relevant for _, relevant in e.ranking)]


def _relevance(examples: Sequence[Example]) -> list[np.ndarray]:
    """Which of each example's first-stage passages is its answer."""
    return [np.array([relevant for _, relevant in e.ranking], dtype=bool) for e in examples]


def _rows(examples: Sequence[Example], negatives: int) -> dict[str, list[str]]:
    """Columns for the trainers: query, positive, negative_1..n (each example padded by repeating its own)."""
    columns: dict[str, list[str]] = {"query": [], "positive": []}
    for n in range(negatives):
        columns[f"negative_{n + 1}"] = []
    for e in examples:
        columns["query"].append(e.query)
        columns["positive"].append(e.positive)
        for n in range(negatives):
            columns[f"negative_{n + 1}"].append(e.negatives[n % len(e.negatives)])
    return columns


def _common(
    examples: Sequence[Example], out: str | Path, base: str | None, overwrite: bool, validation: float, seed: int
) -> tuple[Path, Path, Any]:
    """What both trainers start from: the checked output folder, the base model's folder and the split; the
    random generators seeded."""
    import torch

    from ragapp.embedding import resolve_model

    if not examples:
        raise UsageError("no training examples")
    target = check_out(out, overwrite)
    parts = split(list(examples), key=lambda e: e.key, validation=validation, test=0.0, seed=seed)
    base_folder, _ = resolve_model(base or "")
    torch.manual_seed(seed)
    return target, base_folder, parts


def _fit(
    trainer_class: Any,
    arguments: Callable[[str], Any],
    model: Any,
    loss: Any,
    train: Sequence[Example],
    progress: bool,
    desc: str,
) -> tuple[Any, Any, float]:
    """Train `model` on `train` (each with as many hard negatives as the poorest example has); returns the
    trainer, its result and when training started, for `_save`. `arguments(scratch)` makes the trainer's
    settings around a scratch folder that is removed afterwards."""
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    negatives = max(1, min(len(e.negatives) for e in train))
    train_set = datasets.Dataset.from_dict(_rows(train, negatives))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ragapp-training-") as scratch:
        trainer = trainer_class(model=model, args=arguments(scratch), train_dataset=train_set, loss=loss)
        use_progress(trainer, progress, desc)
        result = trainer.train()
    return trainer, result, started


def _size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


def _save(
    kind: str,
    model: Any,
    target: Path,
    base: Path,
    parts: Any,
    sources: dict[str, Any] | None,
    run: tuple[Any, Any, float],
    summary: dict[str, float],
    meta: dict[str, Any] | None,
) -> RetrieverReport:
    """The report of a finished training `run` (trainer, its result, when it started), and the model with it,
    its examples (`data/`) and any reranker `meta`, staged and renamed into `target`."""
    trainer, result, started = run
    times = training_times(trainer, result)
    report = RetrieverReport(
        kind,
        str(target.resolve()),
        str(base),
        parts.sizes(),
        sources or {},
        round(float(trainer.args.num_train_epochs)),
        times.steps,
        round(time.monotonic() - started, 1),
        round(times.seconds_per_step, 3),
        0.0,
        {k: round(float(v), 4) for k, v in summary.items()},
    )
    with staged(target) as folder:
        model.save_pretrained(str(folder))
        if meta is not None:
            (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        data = folder / "data"
        data.mkdir(exist_ok=True)
        for name in ("train", "validation"):
            rows = [{"query": e.query, "positive": e.positive, "negatives": e.negatives} for e in getattr(parts, name)]
            write_jsonl(data / f"{name}.jsonl", rows)
        report.model_mb = _size_mb(folder)
        (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def _trainer_args(scratch: str, epochs: int, batch_size: int, lr: float, seed: int) -> dict[str, Any]:
    """The fine-tuning settings plus: a short warm-up, batches without two copies of one passage (it would
    be its own in-batch negative), and bfloat16 autocast on CPUs that have it natively (AMX, AVX512-BF16)."""
    from ragapp.embedding import cpu_has_bfloat16

    args = trainer_args(scratch, epochs, batch_size, lr, seed, evaluate=False)
    args["warmup_steps"] = 0.1
    args["batch_sampler"] = "no_duplicates"
    args["bf16"] = args["bf16"] or (args["use_cpu"] and cpu_has_bfloat16())
    return args


def train_reranker(
    examples: Sequence[Example],
    out: str | Path,
    base: str | None = None,
    epochs: int = 1,
    learning_rate: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 256,
    validation: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    sources: dict[str, Any] | None = None,
) -> RetrieverReport:
    """A cross-encoder in `out`, trained on `examples`; the held-out questions measure it and set its blend."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    target, base_folder, parts = _common(examples, out, base, overwrite, validation, seed)
    model = load_cross_encoder(base_folder, "cpu", "float32", max_length)
    held_out = _rankings(parts.validation)
    before = _reranker_validation(model, held_out) if held_out else None

    def arguments(scratch: str) -> Any:
        return CrossEncoderTrainingArguments(
            **_trainer_args(scratch, epochs, batch_size, learning_rate, seed),
            learning_rate_mapping={HEAD_PARAMETERS: learning_rate * HEAD_LR_FACTOR},
        )

    loss = MultipleNegativesRankingLoss(model, num_negatives=IN_BATCH_NEGATIVES)
    run = _fit(CrossEncoderTrainer, arguments, model, loss, parts.train, progress, "training reranker")
    measured = _reranker_validation(model, held_out) if held_out else {}
    chosen = choose_blend({w: measured[f"mrr@10 blend {w}"] for w in BLENDS}) if measured else 1.0
    summary = {"questions": float(len(held_out))}
    if before is not None:
        summary["first_stage_mrr@10"] = before["mrr@10 blend 0.0"]
        summary["untrained_mrr@10"] = before["mrr@10 blend 1.0"]
    if measured:
        summary["reranked_mrr@10"] = measured["mrr@10 blend 1.0"]
        summary["blended_mrr@10"] = measured[f"mrr@10 blend {chosen}"]
        summary["blend"] = chosen
    meta = {"blend": chosen, "max_length": max_length, "trained_on": parts.sizes()}
    return _save("reranker", model, target, base_folder, parts, sources, run, summary, meta)


def _reranker_validation(model: Any, examples: Sequence[Example]) -> dict[str, float]:
    """MRR@10 of the first stage's passages reordered by each blend of reranker and first-stage rank."""
    scores = [pair_logits(model, e.query, [text for text, _ in e.ranking]) for e in examples]
    relevant = _relevance(examples)
    return {f"mrr@10 blend {w}": mrr_at_10([blend(x, w) for x in scores], relevant) for w in BLENDS}


def train_embedder(
    examples: Sequence[Example],
    out: str | Path,
    base: str | None = None,
    epochs: int = 1,
    learning_rate: float = 2e-5,
    batch_size: int = 32,
    max_length: int = 256,
    validation: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    sources: dict[str, Any] | None = None,
) -> RetrieverReport:
    """A sentence-transformers model in `out` (set `embedding.model` to it: the workspace is re-embedded)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.utils import logging as hf_logging

    target, base_folder, parts = _common(examples, out, base, overwrite, validation, seed)
    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(base_folder), device="cpu", local_files_only=True)
    model.max_seq_length = max_length
    held_out = _rankings(parts.validation)

    def measure() -> float:
        return _embedder_validation(lambda texts: model.encode(texts, normalize_embeddings=True), held_out)

    before = measure() if held_out else None

    def arguments(scratch: str) -> Any:
        return Arguments(**_trainer_args(scratch, epochs, batch_size, learning_rate, seed))

    loss = MultipleNegativesRankingLoss(model)
    run = _fit(SentenceTransformerTrainer, arguments, model, loss, parts.train, progress, "training embedder")
    summary = {"questions": float(len(held_out))}
    if before is not None:
        summary["base_mrr@10"] = before
        summary["trained_mrr@10"] = measure()
    return _save("embedder", model, target, base_folder, parts, sources, run, summary, None)


def _embedder_validation(encode: Callable[[list[str]], np.ndarray], examples: Sequence[Example]) -> float:
    """MRR@10 of the first stage's passages reordered by the embedder's cosine to the question alone."""
    scores = []
    for e in examples:
        vectors = encode([e.query] + [text for text, _ in e.ranking])
        scores.append(vectors[1:] @ vectors[0])
    return mrr_at_10(scores, _relevance(examples))
