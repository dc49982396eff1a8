"""Embed search queries with ONNX Runtime: the same vectors as sentence-transformers, ≈3x faster on a CPU.

A search embeds one short query, and torch's per-call overhead dominates that (≈9 ms for MiniLM here, against
≈2.5 ms in ONNX Runtime). The model's transformer is exported once, in float32, with mean pooling and L2
normalisation inside the graph, into a bundle under `cache_dir() / "onnx"`: the graph, the query tokenizer and
the embedding dimension, keyed by the model's bytes and the library versions. A bundle is checked against the
torch model before it is published, so loading a cached one needs neither torch nor the model: a process that
only searches (`ragapp search`, a server's first query) starts in a fraction of a second instead of ≈8 s.
Callers fall back to torch when building it fails in any way (`QueryEncoderError`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ragapp.cache import cache_dir
from ragapp.embedding import declared
from ragapp.errors import RagappError

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the bundle changes: old cache entries are then ignored
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Whatever changes the exported graph, the tokenizer or how they run: a new version is a new bundle.
KEYED_LIBRARIES = ("torch", "transformers", "sentence-transformers", "tokenizers", "onnxruntime")
GRAPH, TOKENIZER, META = "model.onnx", "tokenizer.json", "meta.json"
MIN_SELF_CHECK_COSINE = 0.9999
ENCODE_GROUP = 16  # texts per ONNX Runtime call, sorted by length
# Probes of different lengths, embedded as one padded batch: a wrong pad/truncation setting shows up here.
PROBES = (
    "query",
    "How do I rebuild the vector index after changing the embedding model?",
    "Ünïcödé façade — 東京の天気は？ " * 3,
)


class QueryEncoderError(RagappError, RuntimeError):
    """The ONNX query encoder cannot be built or disagrees with torch; the caller falls back to torch."""


class OnnxQueryEncoder:
    """Embeds short texts into the vectors `SentenceTransformer.encode(..., normalize_embeddings=True)` gives in
    float32. Safe to call from many threads at once (the tokenizer and the session are never mutated).

    Made by `cached` (a published bundle, no torch) or `export` (from the loaded model); the constructor
    loads a bundle folder."""

    def __init__(self, bundle: Path, *, threads: int | None = None):
        from tokenizers import Tokenizer

        meta = json.loads((bundle / META).read_text(encoding="utf-8"))
        self.path = bundle
        self.dim = int(meta["dim"])
        self.exported = False
        self._tokenizer = Tokenizer.from_file(str(bundle / TOKENIZER))
        self._session = _session(bundle / GRAPH, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]

    @classmethod
    def cached(cls, folder: Path, *, threads: int | None = None) -> OnnxQueryEncoder | None:
        """The published bundle for the model in `folder`, or None when there is none or it does not load
        (then `export` makes it again)."""
        try:
            bundle = bundle_path(folder)
        except Exception as exc:  # noqa: BLE001 - unreadable weights: `export` says why
            log.info("no cached query encoder for %s: %s", folder, exc)
            return None
        return cls._published(bundle, threads)

    @classmethod
    def _published(cls, bundle: Path, threads: int | None) -> OnnxQueryEncoder | None:
        if not (bundle / META).is_file():
            return None
        try:
            return cls(bundle, threads=threads)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is exported again
            log.info("exporting the query encoder again: the cached one does not load (%s)", exc)
            return None

    @classmethod
    def export(
        cls,
        st_model: SentenceTransformer,
        folder: Path,
        *,
        threads: int | None = None,
        guard: AbstractContextManager[Any] | None = None,
    ) -> OnnxQueryEncoder:
        """Export the model in `folder` (`st_model` was loaded from it), check the result against torch, and
        publish it in the cache. `guard` is held while copying `st_model`'s tokenizer (not safe to read while
        another thread encodes with it)."""
        try:
            max_length = declared(st_model.max_seq_length, "max_seq_length", folder)
            with guard if guard is not None else contextlib.nullcontext():
                tokenizer = _query_tokenizer(st_model, max_length)
            reference = _float32_model(Path(folder), max_length)
            final = bundle_path(Path(folder))
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", suffix=".tmp", dir=final.parent))
            try:
                _write_graph(reference, staging / GRAPH)
                tokenizer.save(str(staging / TOKENIZER))
                dim = declared(reference.get_embedding_dimension(), "embedding dimension", folder)
                (staging / META).write_text(json.dumps({"dim": dim, "max_seq_length": max_length}), encoding="utf-8")
                candidate = cls(staging, threads=threads)
                candidate._check(reference)
                theirs = cls._published(final, threads)  # another process may have published one meanwhile
                if theirs is None:
                    _publish(staging, final)
                    candidate.path = final  # its graph and tokenizer are in memory: nothing to load again
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            encoder = theirs or candidate
            encoder.exported = True
            return encoder
        except QueryEncoderError:
            raise
        except Exception as exc:  # any failure means "use torch instead"
            raise QueryEncoderError(f"cannot build the ONNX query encoder: {type(exc).__name__}: {exc}") from exc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text (padded to the longest text, truncated at the
        model's max_seq_length)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        columns = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }
        # Texts of similar length together, each group padded only to its longest: attribution embeds a
        # few dozen passage sentences of very different lengths at once.
        lengths = columns["attention_mask"].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for at in range(0, len(order), ENCODE_GROUP):
            rows = order[at : at + ENCODE_GROUP]
            width = int(lengths[rows].max())
            feed = {name: columns[name][rows, :width] for name in self._inputs}
            (vectors[rows],) = self._session.run(None, feed)
        return vectors

    def _check(self, reference: SentenceTransformer) -> None:
        expected = reference.encode(
            list(PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        cosines = np.sum(self.encode(PROBES) * expected.astype(np.float32), axis=1)
        if not np.all(cosines >= MIN_SELF_CHECK_COSINE):
            raise QueryEncoderError(
                f"the ONNX query encoder disagrees with torch (cosines {np.round(cosines, 5).tolist()}, "
                f"need >= {MIN_SELF_CHECK_COSINE}); it was not cached"
            )


def bundle_path(folder: Path) -> Path:
    return cache_dir() / "onnx" / cache_key(folder)


def cache_key(folder: Path) -> str:
    """sha256 of the weights, config.json, the versions of KEYED_LIBRARIES and EXPORT_VERSION: a changed model,
    exporter or runtime gets a new bundle. (Versions come from package metadata: no import of torch.)"""
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise QueryEncoderError(f"no {' or '.join(WEIGHT_FILES)} in {folder}")
    digest = hashlib.sha256()
    for path in (weights, folder / "config.json"):
        digest.update(f"{path.name}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    for name in KEYED_LIBRARIES:
        digest.update(f"\0{name}={importlib.metadata.version(name)}".encode())
    digest.update(f"\0export={EXPORT_VERSION}".encode())
    return digest.hexdigest()[:32]


def _publish(staging: Path, final: Path) -> None:
    """Move a checked bundle into place in one rename, so readers see a whole bundle or none. Files are
    fsync-ed first (the rename must not outlive their contents in a crash). A damaged bundle in the way is
    moved aside first; one that another process published in the meantime wins."""
    for name in (GRAPH, TOKENIZER, META):
        with open(staging / name, "rb+") as written:
            os.fsync(written.fileno())
    if final.exists():
        aside = final.with_name(f".{final.name}-{os.getpid()}-{time.monotonic_ns()}.stale")
        with contextlib.suppress(OSError):
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(staging, final)
    except OSError:
        if not (final / META).is_file():  # not a concurrent publish: a real failure
            raise
        return
    with contextlib.suppress(OSError):  # make the rename itself durable
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _write_graph(reference: SentenceTransformer, path: Path) -> None:
    """Export `reference`'s transformer (float32) with mean pooling and L2 normalisation to `path`."""
    import torch

    transformer = _auto_model(reference)
    names = ["input_ids", "attention_mask"]
    if _takes_token_type_ids(reference):
        names.append("token_type_ids")
    # A padded dummy batch (small ids exist in any vocabulary), so the traced graph keeps the attention mask.
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.int64)
    dummy = {"input_ids": mask * torch.arange(1, 5), "attention_mask": mask, "token_type_ids": torch.zeros_like(mask)}
    started = time.perf_counter()
    # The exporter warns about itself (TorchScript is "legacy") and about traced shape checks that are
    # constant for this graph: noise in a server's log, where the first query triggers this.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _mean_pooled(transformer, names),
            tuple(dummy[n] for n in names),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "embedding": {0: "batch"}},
        )
    log.info("exported the query encoder in %.1f s", time.perf_counter() - started)


def _session(path: Path, threads: int | None) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(2, cpu_budget())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_budget() -> int:
    """The cores this process may compute on: OMP_NUM_THREADS when set (what torch obeys too), else the
    CPUs it may run on. A process given one core must not spin a second thread on a core another process
    computes on; a short query gains nothing from more than 2."""
    with contextlib.suppress(ValueError):
        wanted = int(os.environ.get("OMP_NUM_THREADS", ""))
        if wanted > 0:
            return wanted
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _float32_model(folder: Path, max_seq_length: int) -> SentenceTransformer:
    """The model reloaded in float32 on the CPU: what is exported, and what the export is checked against.

    Reloaded, not converted: a float32 copy of bfloat16-loaded weights keeps their rounding (cosine to the
    real float32 vectors only ≈0.99994). Loading MiniLM takes ≈0.1 s."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(folder), device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32}
    ).eval()
    model.max_seq_length = max_seq_length
    return model


def _query_tokenizer(st_model: SentenceTransformer, max_length: int) -> Any:
    """A private copy of the fast tokenizer's Rust core, padding to the longest text and truncating where
    sentence-transformers does (`max_seq_length`).

    The shipped tokenizer.json pads every text to 128 tokens and truncates at 128: kept, a short query costs 3x
    the work, and texts longer than 128 tokens embed differently from sentence-transformers (256 for MiniLM)."""
    hf_tokenizer = st_model.tokenizer
    tokenizer = copy.deepcopy(hf_tokenizer.backend_tokenizer)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    tokenizer.enable_padding(pad_id=pad_id, pad_token=hf_tokenizer.pad_token or "[PAD]")
    return tokenizer


def _auto_model(reference: SentenceTransformer) -> torch.nn.Module:
    """The transformer inside the first module (typed as Tensor | Module through nn.Module's __getattr__)."""
    return cast("torch.nn.Module", reference[0].auto_model)


def _takes_token_type_ids(reference: SentenceTransformer) -> bool:
    transformer = _auto_model(reference)
    accepted = inspect.signature(transformer.forward).parameters
    return "token_type_ids" in accepted and "token_type_ids" in reference.tokenizer.model_input_names


def _mean_pooled(transformer: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """The transformer, then the mean over unpadded tokens, then L2 normalisation: the ST pipeline as one graph."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(names, inputs, strict=True))
            hidden = self.transformer(**kwargs).last_hidden_state
            mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return MeanPooled().eval()
