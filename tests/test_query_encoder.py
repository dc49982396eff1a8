"""The ONNX query encoder against the real shipped model in float32: its vectors, its cache, threads, fallback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
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
        built = OnnxQueryEncoder.export(embedder.model, embedder.folder)
    assert built.exported and built.path.parent == cache / "onnx"
    assert sorted(p.name for p in built.path.iterdir()) == ["meta.json", "model.onnx", "tokenizer.json"]
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


def test_cached_bundle_is_loaded_not_exported(
    embedder: Embedder, encoder: OnnxQueryEncoder, expected: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (encoder.path / "model.onnx").stat().st_mtime_ns

    def no_export(*args: object) -> None:
        raise AssertionError("export called although the cache holds the bundle")

    monkeypatch.setattr(query_encoder, "_write_graph", no_export)
    again = OnnxQueryEncoder.cached(embedder.folder)
    assert again is not None and not again.exported and again.path == encoder.path
    assert (encoder.path / "model.onnx").stat().st_mtime_ns == before
    assert cosines(again.encode(QUERIES), expected).min() >= 0.99999
    assert [p.name for p in encoder.path.parent.iterdir()] == [encoder.path.name]  # no staging left behind


def test_a_search_only_process_never_imports_torch(
    embedder: Embedder, encoder: OnnxQueryEncoder, expected: np.ndarray, cache: Path
) -> None:
    """What `ragapp search` and a server's first query get: the dimension, the fingerprint and the query
    vectors from the cached bundle, with neither torch nor the model loaded (≈0.5 s instead of ≈8 s)."""
    code = (
        "import json, sys\n"
        "from ragapp.embedding import Embedder\n"
        "e = Embedder()\n"
        "queries = json.load(sys.stdin)\n"
        "out = {'dim': e.dim, 'fingerprint': e.fingerprint, 'vectors': e.embed_queries(queries).tolist()}\n"
        "out['loaded'] = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "RAGAPP_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(QUERIES),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    assert out["dim"] == embedder.dim and out["fingerprint"] == embedder.fingerprint
    assert cosines(np.array(out["vectors"], dtype=np.float32), expected).min() >= 0.99999


def test_damaged_bundle_is_exported_again(
    embedder: Embedder,
    expected: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path))  # its own cache: the module's stays valid
    bundle = query_encoder.bundle_path(embedder.folder)
    bundle.mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(b"\x00garbage, not a protobuf\xff" * 100)
    (bundle / "tokenizer.json").write_text("{}")
    (bundle / "meta.json").write_text('{"dim": 384}')
    with caplog.at_level(logging.INFO, logger="ragapp.query_encoder"):
        assert OnnxQueryEncoder.cached(embedder.folder) is None
    assert any("does not load" in r.message for r in caplog.records)
    rebuilt = OnnxQueryEncoder.export(embedder.model, embedder.folder)
    assert rebuilt.exported and rebuilt.path == bundle
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]  # the damaged one is gone, not set aside
    reloaded = OnnxQueryEncoder.cached(embedder.folder)
    assert reloaded is not None and cosines(reloaded.encode(QUERIES), expected).min() >= 0.99999


def test_a_bundle_published_meanwhile_by_another_process_wins(
    embedder: Embedder, encoder: OnnxQueryEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes' first searches export at once; the second to finish keeps the first one's bundle
    (readers holding it see no change) and leaves no staging folder behind."""
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path))
    bundle = query_encoder.bundle_path(embedder.folder)
    real_write = query_encoder._write_graph

    published: list[int] = []

    def other_process_publishes_first(reference: object, path: Path) -> None:
        real_write(reference, path)  # type: ignore[arg-type]  # the real export; then the other "process":
        shutil.copytree(encoder.path, bundle)
        published.append((bundle / "model.onnx").stat().st_ino)

    monkeypatch.setattr(query_encoder, "_write_graph", other_process_publishes_first)
    mine = OnnxQueryEncoder.export(embedder.model, embedder.folder)
    assert mine.path == bundle and mine.exported
    assert published == [(bundle / "model.onnx").stat().st_ino]  # theirs, not replaced by ours
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


def test_an_export_that_fails_its_check_is_not_cached(
    embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(query_encoder, "MIN_SELF_CHECK_COSINE", 1.01)  # FAKE: a check no export can pass
    with pytest.raises(QueryEncoderError, match="disagrees with torch"):
        OnnxQueryEncoder.export(embedder.model, embedder.folder)
    assert list((tmp_path / "onnx").iterdir()) == []  # nothing published, no staging left
    assert OnnxQueryEncoder.cached(embedder.folder) is None


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


def test_embed_queries_uses_onnx(encoder: OnnxQueryEncoder, expected: np.ndarray) -> None:
    fresh = Embedder()  # its own instance: the shared one may hold an encoder from another cache
    got = fresh.embed_queries(QUERIES[:3])
    assert fresh._query_encoder is not None  # loaded from the module's cache, not exported again
    assert fresh._query_encoder.path == encoder.path and not fresh._query_encoder.exported
    assert fresh._model is None  # queries alone never load the torch model
    assert cosines(got, expected[:3]).min() >= 0.99999
    assert fresh.embed_queries([]).shape == (0, fresh.dim)


def test_embed_queries_falls_back_to_torch(
    expected: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(*args: object, **kwargs: object) -> OnnxQueryEncoder:
        calls.append(1)
        raise QueryEncoderError("FAKE failure: the encoder cannot be built")  # FAKE: simulated, not a real export

    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path))  # an empty cache: the encoder must be exported
    monkeypatch.setattr(OnnxQueryEncoder, "export", broken)
    fresh = Embedder(dtype="float32")  # its own instance: the shared one already has its encoder
    with caplog.at_level(logging.WARNING, logger="ragapp.embedding"):
        first = fresh.embed_queries(QUERIES[:3])
        second = fresh.embed_queries(QUERIES[:3])
    assert calls == [1]  # tried once, then torch for good
    assert [r.levelno for r in caplog.records if "torch" in r.message] == [logging.WARNING]
    assert np.array_equal(first, fresh.embed(QUERIES[:3])) and np.array_equal(first, second)
    assert cosines(first, expected[:3]).min() >= 0.99999
