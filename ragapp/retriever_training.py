"""Training the retriever's models on examples from `ragapp.retriever_data`: a cross-encoder reranker and
the bi-encoder that embeds chunks.

Both start from the shipped all-MiniLM-L6-v2 (or `--base`) and learn with a softmax over candidates: for each
question the answering passage must score above its mined hard negatives (the embedder also above every other
passage in the batch).

The reranker learns as a correction of the first stage. A cross-encoder started from a bi-encoder has to
learn question–passage attention from scratch; trained to rank on its own from a few hundred questions, it
ranked far below the first stage (SciFact: held-out MRR@10 0.55 against 0.77) and blending could not use it.
So each candidate's training score is the reranker's logit plus the first stage's prior (−log rank, weighted
to fit the training questions): the loss is small wherever the first stage is already right, and the
reranker spends what it learns on where it is wrong.

Questions, not pairs, are split, and the held-out ones measure the result the way search uses it: the first
stage's top passages reordered (MRR@10, before and after). For a reranker they also choose how much of its
logit to add (`blend`), written into the folder (`ragapp-reranker.json`) for search to use.
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
import torch

from ragapp.errors import UsageError
from ragapp.reranker import META_FILE, combine, first_stage_prior, load_cross_encoder, pair_logits
from ragapp.retriever_data import MINING_DEPTH, Example
from ragapp.training import check_out, staged, trainer_args, training_times, use_progress
from ragapp.training_data import split, write_jsonl

BLENDS = tuple(round(0.1 * n, 1) for n in range(11))
PRIOR_WEIGHTS = tuple(round(0.25 * n, 2) for n in range(1, 21))  # searched for the one that fits the training set
HEAD_LR_FACTOR = 10  # the reranker's one-logit head starts from random weights: it learns this much faster
HEAD_PARAMETERS = r"(^|\.)\d+\.linear\.|classifier\."  # the new one-logit layer, or a classification head
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


def _rows(examples: Sequence[Example], negatives: int, priors: bool = False) -> dict[str, list[Any]]:
    """Columns for the trainers: query, positive, negative_1..n (each example padded by repeating its own).

    With `priors` (the reranker), the negatives are the first stage's best-ranked passages of other documents,
    the ones a correction of its order must get past, and a `label` column holds each candidate's first-stage
    prior, positive first."""
    columns: dict[str, list[Any]] = {"query": [], "positive": []}
    for n in range(negatives):
        columns[f"negative_{n + 1}"] = []
    for e in examples:
        pool = e.hardest(negatives) if priors else e.negatives
        chosen = [pool[n % len(pool)] for n in range(negatives)]
        columns["query"].append(e.query)
        columns["positive"].append(e.positive)
        for n, negative in enumerate(chosen):
            columns[f"negative_{n + 1}"].append(negative)
        if priors:
            columns.setdefault("label", []).append(first_stage_prior(_ranks(e, [e.positive, *chosen])).tolist())
    return columns


def _ranks(example: Example, texts: Sequence[str]) -> np.ndarray:
    """Where the first stage ranked each text for the example's question (1 best); a text it did not rank at all
    counts as ranked just past its list."""
    position: dict[str, int] = {}
    for n, (text, _) in enumerate(example.ranking):
        position.setdefault(text, n + 1)
    return np.array([position.get(text, MINING_DEPTH + 1) for text in texts])


def fit_prior_weight(labels: Sequence[Sequence[float]]) -> float:
    """The weight of the first-stage prior that best predicts the answers among their candidates on its own
    (lowest cross-entropy; `labels` is `_rows`' column of priors, answer first): the reranker is then trained to
    correct that prediction."""
    priors = np.array(labels, dtype=np.float64)

    def loss(weight: float) -> float:
        scores = weight * priors
        top = scores.max(axis=1, keepdims=True)
        log_sum = np.log(np.exp(scores - top).sum(axis=1)) + top[:, 0]
        return float((log_sum - scores[:, 0]).mean())

    return min(PRIOR_WEIGHTS, key=loss)


class PriorRankingLoss(torch.nn.Module):
    """Cross-entropy of the answer among each question's candidates (answer and hard negatives), each scored
    by the reranker's logit plus `prior_weight` × its first-stage prior (the batch's `label` column)."""

    def __init__(self, model: Any, prior_weight: float):
        super().__init__()
        self.model = model
        self.prior_weight = prior_weight

    def forward(self, inputs: list[list[str]], labels: Any, prompt: str | None = None, task: str | None = None) -> Any:
        from sentence_transformers.util import batch_to_device

        anchors = inputs[0]
        logits = []
        for candidates in inputs[1:]:
            features = self.model.preprocess(list(zip(anchors, candidates, strict=True)), prompt=prompt, task=task)
            features = batch_to_device(features, self.model.device)
            logits.append(self.model(features)["scores"].reshape(-1))
        scores = torch.stack(logits, dim=1).float()
        scores = scores + self.prior_weight * torch.stack(list(labels)).to(scores)
        target = torch.zeros(len(anchors), dtype=torch.long, device=scores.device)
        return torch.nn.functional.cross_entropy(scores, target)

    def get_config_dict(self) -> dict[str, float]:
        return {"prior_weight": self.prior_weight}


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
    columns: dict[str, list[Any]],
    progress: bool,
    desc: str,
) -> tuple[Any, Any, float]:
    """Train `model` on the `_rows` columns; returns the trainer, its result and when training started, for
    `_save`. `arguments(scratch)` makes the trainer's settings around a scratch folder that is removed
    afterwards."""
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    train_set = datasets.Dataset.from_dict(columns)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ragapp-training-") as scratch:
        trainer = trainer_class(model=model, args=arguments(scratch), train_dataset=train_set, loss=loss)
        use_progress(trainer, progress, desc)
        result = trainer.train()
    return trainer, result, started


def _negatives(train: Sequence[Example]) -> int:
    """Hard negatives per question in training: as many as the poorest example has (others are cut to it)."""
    return max(1, min(len(e.negatives) for e in train))


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
            rows = []
            for e in getattr(parts, name):
                negatives = e.hardest(len(e.negatives)) if kind == "reranker" else e.negatives
                ranks = _ranks(e, [e.positive, *negatives]).tolist()  # the first stage's, positive first
                rows.append({"query": e.query, "positive": e.positive, "negatives": negatives, "ranks": ranks})
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

    target, base_folder, parts = _common(examples, out, base, overwrite, validation, seed)
    model = load_cross_encoder(base_folder, "cpu", "float32", max_length)
    columns = _rows(parts.train, _negatives(parts.train), priors=True)
    prior_weight = fit_prior_weight(columns["label"])
    held_out = _rankings(parts.validation)

    def arguments(scratch: str) -> Any:
        return CrossEncoderTrainingArguments(
            **_trainer_args(scratch, epochs, batch_size, learning_rate, seed),
            learning_rate_mapping={HEAD_PARAMETERS: learning_rate * HEAD_LR_FACTOR},
        )

    loss = PriorRankingLoss(model, prior_weight)
    run = _fit(CrossEncoderTrainer, arguments, model, loss, columns, progress, "training reranker")
    summary = {"questions": float(len(held_out)), "prior_weight": prior_weight}
    chosen = 1.0
    if held_out:
        measured = _reranker_validation(model, held_out, prior_weight)
        chosen = choose_blend({w: measured[w] for w in BLENDS})
        summary["first_stage_mrr@10"] = measured[0.0]
        summary["reranker_alone_mrr@10"] = measured["alone"]
        summary["reranked_mrr@10"] = measured[chosen]
        summary["blend"] = chosen
    meta = {"blend": chosen, "prior_weight": prior_weight, "max_length": max_length, "trained_on": parts.sizes()}
    return _save("reranker", model, target, base_folder, parts, sources, run, summary, meta)


def _reranker_validation(model: Any, examples: Sequence[Example], prior_weight: float) -> dict[float | str, float]:
    """MRR@10 of the first stage's passages reordered with each blend (0: the first stage's order), and by the
    reranker's logits alone ("alone")."""
    logits = [pair_logits(model, e.query, [text for text, _ in e.ranking]) for e in examples]
    priors = [first_stage_prior(len(e.ranking)) for e in examples]
    relevant = _relevance(examples)
    measured: dict[float | str, float] = {"alone": mrr_at_10(logits, relevant)}
    for w in BLENDS:
        measured[w] = mrr_at_10([combine(x, p, w, prior_weight) for x, p in zip(logits, priors, strict=True)], relevant)
    return measured


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
    columns = _rows(parts.train, _negatives(parts.train))
    run = _fit(SentenceTransformerTrainer, arguments, model, loss, columns, progress, "training embedder")
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
