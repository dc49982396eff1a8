"""The ONNX query encoder against the real shipped model in float32: its vectors, its cache, threads, fallback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragapp import query_encoder
from ragapp.embedding import Embedder, load_embedder
from ragapp.query_encoder import OnnxQueryEncoder, QueryEncoderError

pytestmark = pytest.mark.slow

LONG = " ".join(f"Paragraph {i} explains how the ingest command splits documents into chunks." for i in range(40))
QUERIES = [
    "faiss",
    "How do I configure the vector index?",
    "What does `ragapp ingest --watch` do with deleted files?",
    "Ünïcödé façade: naïve café résumé",
    "東京の天気は？",
    "emoji 🚀🔥 query",
    "What's the difference between BM25 and dense retrieval, and when should I use hybrid search with MMR?",
    "SELECT * FROM docs WHERE id = 42;",
    "   leading and trailing spaces   ",
    LONG,  # > 300 tokens: truncated at max_seq_length, as sentence-transformers does
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ragapp-cache")


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(cache))


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


@pytest.fixture(scope="module")
def expected(embedder: Embedder) -> np.ndarray:
    """What sentence-transformers gives in float32 (a fresh float32 load, not the Embedder's bfloat16 model)."""
    import torch
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(
        str(embedder.folder), device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32}
    )
    assert len(reference.tokenize([LONG])["input_ids"][0]) == reference.max_seq_length  # LONG is truncated
    return reference.encode(QUERIES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


@pytest.fixture(scope="module")
def encoder(embedder: Embedder, cache: Path) -> Iterator[OnnxQueryEncoder]:
    """Exported once for the module, into its own cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAGAPP_CACHE_DIR", str(cache))
        built = OnnxQueryEncoder(embedder.model, embedder.folder)
    assert built.exported and built.path.parent == cache / "onnx"
    yield built


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_vectors_equal_sentence_transformers_float32(encoder: OnnxQueryEncoder, expected: np.ndarray) -> None:
    single = np.concatenate([encoder.encode([q]) for q in QUERIES])
    batch = encoder.encode(QUERIES)  # one batch padded to the longest (the truncated LONG)
    for got in (single, batch):
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert cosines(got, expected).min() >= 0.99999
    assert encoder.encode([]).shape == (0, expected.shape[1])


def test_cached_file_is_loaded_not_exported(
    embedder: Embedder, encoder: OnnxQueryEncoder, expected: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = encoder.path.stat().st_mtime_ns

    def no_export(*args: object) -> None:
        raise AssertionError("export called although the cache holds the file")

    monkeypatch.setattr(query_encoder, "export", no_export)
    again = OnnxQueryEncoder(embedder.model, embedder.folder)
    assert not again.exported and again.path == encoder.path
    assert encoder.path.stat().st_mtime_ns == before
    assert cosines(again.encode(QUERIES), expected).min() >= 0.99999
    assert list((encoder.path.parent).glob("*.tmp")) == []


def test_corrupt_cache_file_is_exported_again(
    embedder: Embedder,
    expected: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path))  # its own cache: the module's stays valid
    path = tmp_path / "onnx" / f"{query_encoder.cache_key(embedder.folder)}.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage, not a protobuf\xff" * 100)
    with caplog.at_level(logging.INFO, logger="ragapp.query_encoder"):
        rebuilt = OnnxQueryEncoder(embedder.model, embedder.folder)
    assert rebuilt.exported and rebuilt.path == path
    assert any("re-exporting" in r.message for r in caplog.records)
    assert cosines(rebuilt.encode(QUERIES), expected).min() >= 0.99999


def test_threads_get_the_sequential_vectors(encoder: OnnxQueryEncoder) -> None:
    work = [[QUERIES[(t * 7 + i) % len(QUERIES)] for i in range(25)] for t in range(4)]
    sequential = [[encoder.encode([q])[0] for q in queries] for queries in work]
    results: list[list[np.ndarray] | BaseException | None] = [None] * len(work)
    start = threading.Barrier(len(work))

    def run(t: int) -> None:
        start.wait()
        try:
            results[t] = [encoder.encode([q])[0] for q in work[t]]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[t] = exc

    threads = [threading.Thread(target=run, args=(t,)) for t in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, sequential, strict=True):
        assert isinstance(got, list), got
        assert np.allclose(np.stack(got), np.stack(want), atol=1e-6)


def test_embed_queries_uses_onnx(embedder: Embedder, encoder: OnnxQueryEncoder, expected: np.ndarray) -> None:
    got = embedder.embed_queries(QUERIES[:3])
    assert embedder._query_encoder is not None  # built from the module's cache, not torch
    assert cosines(got, expected[:3]).min() >= 0.99999
    assert embedder.embed_queries([]).shape == (0, embedder.dim)


def test_embed_queries_falls_back_to_torch(
    expected: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(*args: object, **kwargs: object) -> OnnxQueryEncoder:
        calls.append(1)
        raise QueryEncoderError("FAKE failure: the encoder cannot be built")  # FAKE: simulated, not a real export

    monkeypatch.setattr(query_encoder, "OnnxQueryEncoder", broken)
    fresh = Embedder(dtype="float32")  # its own instance: the shared one already has its encoder
    with caplog.at_level(logging.WARNING, logger="ragapp.embedding"):
        first = fresh.embed_queries(QUERIES[:3])
        second = fresh.embed_queries(QUERIES[:3])
    assert calls == [1]  # tried once, then torch for good
    assert [r.levelno for r in caplog.records if "torch" in r.message] == [logging.WARNING]
    assert np.array_equal(first, fresh.embed(QUERIES[:3])) and np.array_equal(first, second)
    assert cosines(first, expected[:3]).min() >= 0.99999
