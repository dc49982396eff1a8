"""Reranking: a cross-encoder reads the question and each fused candidate together and scores the pair.

A bi-encoder embeds the question and the passage apart and compares the vectors; a cross-encoder attends
across both, so it judges relevance better, at the price of one forward pass per candidate. It reorders
the top `retrieval.rerank_candidates` hits of the first stage and the best `k` are kept.

No reranker ships with ragapp (none can be downloaded offline): `ragapp reranker train` makes one from the
shipped MiniLM, from labelled pairs or from questions generated from the workspace's own chunks. Its folder
carries `ragapp-reranker.json`, which records how the training went and the weight with which the
reranker's score is blended with the first stage's (tuned on held-out questions when training).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragapp.embedding import resolve_dtype
from ragapp.errors import ConfigError
from ragapp.locks import MODEL_LOADING

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

log = logging.getLogger(__name__)

META_FILE = "ragapp-reranker.json"


@dataclass(frozen=True)
class RerankerMeta:
    """What training recorded beside the model. A candidate's final score is `blend` × the reranker's logit
    + `prior_weight` × the first stage's prior (−log of its rank): the reranker was trained as a correction
    of the first stage's order, and `blend` 0 keeps that order."""

    blend: float = 1.0
    prior_weight: float = 0.0
    max_length: int = 256

    @classmethod
    def read(cls, folder: Path) -> RerankerMeta:
        path = folder / META_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                blend=float(data.get("blend", 1.0)),
                prior_weight=float(data.get("prior_weight", 0.0)),
                max_length=int(data.get("max_length", 256)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"retrieval.reranker: {path} is not valid ({exc})") from None


def resolve_reranker(spec: str) -> Path:
    """The reranker's folder; refused unless it is a local model folder (nothing is fetched from a hub)."""
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"retrieval.reranker: {spec!r} is not a local cross-encoder folder (train one with `ragapp reranker train`)"
        )
    return path.resolve()


class Reranker:
    """Scores (question, passage) pairs with a sentence-transformers CrossEncoder, loaded on first use.

    Safe to share between a server's threads: one scoring call at a time (a fast tokenizer cannot be
    shared across threads)."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", batch_size: int = 16):
        self.folder = resolve_reranker(model)
        self.meta = RerankerMeta.read(self.folder)
        self.device = device
        self.dtype = resolve_dtype(dtype, device)
        self.batch_size = batch_size
        self._model: CrossEncoder | None = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """Changes when the folder's weights or blend change: an evaluation run records it."""
        weights = [p for p in sorted(self.folder.glob("*.safetensors")) if p.is_file()]
        stamp = ",".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in weights)
        return f"{self.folder}|{stamp}|blend {self.meta.blend} prior {self.meta.prior_weight}"

    @property
    def model(self) -> CrossEncoder:
        if self._model is None:
            with MODEL_LOADING:
                if self._model is None:
                    self._model = load_cross_encoder(self.folder, self.device, self.dtype, self.meta.max_length)
        return self._model

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Raw relevance logits (higher is more relevant), one per passage, in float32."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        model = self.model
        with self._lock:
            return pair_logits(model, query, passages, self.batch_size)

    def rerank(self, query: str, ranked: Sequence[tuple[int, float]], texts: Sequence[str]) -> list[tuple[int, float]]:
        """`ranked` (first-stage order, with `texts` in the same order) reordered, each with its final score."""
        logits = self.score(query, texts)
        final = combine(logits, first_stage_prior(len(ranked)), self.meta.blend, self.meta.prior_weight)
        order = sorted(range(len(ranked)), key=lambda n: (-final[n], n))
        return [(ranked[n][0], float(final[n])) for n in order]


def pair_logits(model: CrossEncoder, query: str, passages: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """The cross-encoder's raw scores for (query, passage) pairs, float32; no sigmoid, which would squash the
    differences between strong candidates."""
    import torch

    scores = model.predict(
        [(query, p) for p in passages],
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        show_progress_bar=False,
    )
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def first_stage_prior(ranks: int | np.ndarray) -> np.ndarray:
    """What the first stage's order says about each candidate: −log(rank), rank 1 best. `ranks` is a count
    (ranks 1..n) or the ranks themselves. Ranks, not scores: fused scores have no fixed scale."""
    positions = np.arange(1, ranks + 1) if isinstance(ranks, int) else np.asarray(ranks)
    return -np.log(positions.astype(np.float32))


def combine(logits: np.ndarray, prior: np.ndarray, weight: float, prior_weight: float) -> np.ndarray:
    """The final scores: `weight` × reranker logits + `prior_weight` × first-stage prior."""
    return (weight * logits + prior_weight * prior).astype(np.float32)


def load_cross_encoder(folder: Path, device: str = "cpu", dtype: str = "float32", max_length: int = 256) -> Any:
    """A CrossEncoder from a local folder, offline.

    A sentence-transformers embedding model (the shipped MiniLM) becomes a new cross-encoder whose score
    is a linear layer over the *mean* of its token vectors: that is what the encoder was trained to
    summarise with. Its [CLS] token, which a classification head would read, was never trained to mean
    anything, and a reranker built on it learned several times more slowly on SciFact."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_dtype = getattr(torch, dtype)
    if _is_embedding_model(folder):
        from sentence_transformers.base.modules import Dense, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        encoder = Transformer(
            str(folder),
            transformer_task="feature-extraction",
            model_kwargs={"dtype": torch_dtype, "local_files_only": True},
            processor_kwargs={"model_max_length": max_length, "local_files_only": True},
            config_kwargs={"local_files_only": True},
        )
        width = int(encoder.get_embedding_dimension())
        head = Dense(width, 1, activation_function=None, module_output_name="scores")
        torch.nn.init.normal_(head.linear.weight, std=0.02)
        torch.nn.init.zeros_(head.linear.bias)
        return CrossEncoder(modules=[encoder, Pooling(width, "mean"), head], device=device)
    return CrossEncoder(
        str(folder),
        device=device,
        max_length=max_length,
        local_files_only=True,
        model_kwargs={"dtype": torch_dtype},
    )


def _is_embedding_model(folder: Path) -> bool:
    """Whether `folder` holds a sentence-transformers embedding model rather than a cross-encoder."""
    settings = folder / "config_sentence_transformers.json"
    if not (folder / "modules.json").is_file():
        return False
    if not settings.is_file():
        return True  # saved before model types were recorded: an embedding model
    try:
        return json.loads(settings.read_text(encoding="utf-8")).get("model_type", "SentenceTransformer") == (
            "SentenceTransformer"
        )
    except (ValueError, AttributeError):
        return False


@functools.lru_cache(maxsize=4)
def load_reranker(model: str, device: str = "cpu", dtype: str = "auto", batch_size: int = 16) -> Reranker:
    """One loaded reranker per setting per process, shared by every App (a server opens many)."""
    return Reranker(model, device=device, dtype=dtype, batch_size=batch_size)
