"""The shipped embedder, including concurrent calls from many threads (as a server's searches make them)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from ragapp.embedding import Embedder, load_embedder

pytestmark = pytest.mark.slow

QUERIES = [f"How do I configure option number {i} of the ingest command?" for i in range(24)]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def test_vectors_are_normalised(embedder: Embedder) -> None:
    vectors = embedder.embed(QUERIES[:3])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)


def in_threads(embedder: Embedder, work: list[list[str]]) -> list[Any]:
    results: list[Any] = [None] * len(work)
    start = threading.Barrier(len(work))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = embedder.embed(work[i])
        except Exception as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_calls_are_batched_and_each_gets_its_own_vectors(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = [embedder.embed([q]) for q in QUERIES]
    batches: list[int] = []
    encode = embedder._encode

    def slow_encode(texts: list[str]) -> np.ndarray:
        batches.append(len(texts))
        time.sleep(0.2)  # the others arrive while this one encodes
        return encode(texts)

    monkeypatch.setattr(embedder, "_encode", slow_encode)
    work = [[q] for q in QUERIES[:20]] + [QUERIES[20:24]]
    results = in_threads(embedder, work)
    for got, texts in zip(results, work, strict=True):
        expected = np.vstack([alone[QUERIES.index(t)] for t in texts])
        assert got.shape == expected.shape
        # Batching pads differently: the same vectors up to rounding (bfloat16 rounds at about 1e-3).
        assert np.allclose(got, expected, atol=1e-5 if embedder.dtype == "float32" else 2e-3)
        assert np.min(np.sum(got * expected, axis=1)) > 0.9999
    assert sum(batches) == 24 and len(batches) < len(work)  # fewer encodes than calls


def test_an_encode_error_reaches_every_caller_of_its_batch(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(texts: list[str]) -> np.ndarray:
        time.sleep(0.1)
        raise RuntimeError("model exploded")

    monkeypatch.setattr(embedder, "_encode", failing)
    results = in_threads(embedder, [[q] for q in QUERIES[:6]])
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
    monkeypatch.undo()
    assert embedder.embed(QUERIES[:1]).shape == (1, embedder.dim)  # and the next call works
