"""TransformersGenerator.reference_nll / text_tokens on the real shipped SmolLM2-135M-Instruct.

Each score is checked against an independent computation in the test (HF's own loss, or a manual
log-softmax gather), so perplexities reported by evals mean what they say.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub are imported anywhere

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from ragapp.evals.metrics import perplexity

from ragapp.generators.base import Generator, Message
from ragapp.generators.transformers_local import TransformersGenerator
from tests.lora import shipped_generator

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
RIGHT = "The capital of France is Paris."
WRONG = "The capital of France is Tokyo."
PLAIN = "Retrieval-augmented generation answers questions from your own documents. It cites its sources."


@pytest.fixture(scope="module")
def gen() -> Iterator[TransformersGenerator]:
    """One thread: with other processes on the 2 cores, more torch threads made model tests slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield shipped_generator()  # the process's one copy of the shipped model, shared with other modules
    torch.set_num_threads(before)  # the setting is process-wide; leave other test modules theirs


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    """A 48-token context window, so truncation is exercised without an 8k-token forward pass (≈ 1 min on CPU)."""
    window = 48
    monkeypatch.setattr(TransformersGenerator, "context_window", property(lambda self: window))
    return window


def _prompt_ids(gen: TransformersGenerator, messages: Sequence[Message]) -> list[int]:
    conversation = [dict(m) for m in messages]
    return list(gen.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False))


def _text_ids(gen: TransformersGenerator, text: str) -> list[int]:
    return gen.tokenizer.encode(text, add_special_tokens=False)


def _manual_nll(gen: TransformersGenerator, ids: list[int], first_scored: int) -> float:
    """Sum of -log p(ids[i] | ids[:i]) for i >= first_scored, from the full logits."""
    import torch

    x = torch.tensor([ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(gen.model(x).logits[0].float(), dim=-1)
    targets = x[0, first_scored:]
    return -float(logprobs[first_scored - 1 : -1].gather(1, targets[:, None]).sum())


def _hf_loss(gen: TransformersGenerator, ids: list[int]) -> float:
    import torch

    x = torch.tensor([ids])
    with torch.inference_mode():
        return float(gen.model(x, labels=x).loss)


@pytest.mark.slow
def test_protocol(gen: TransformersGenerator) -> None:
    assert isinstance(gen, Generator)


@pytest.mark.slow
def test_text_tokens(gen: TransformersGenerator) -> None:
    assert gen.text_tokens("") == 0
    assert gen.text_tokens(RIGHT) == len(_text_ids(gen, RIGHT)) > 0
    # no special tokens: the text's tokens are those it has inside a prompt
    assert gen.tokenizer.decode(_text_ids(gen, RIGHT)) == RIGHT


@pytest.mark.slow
def test_plain_text_equals_hf_loss(gen: TransformersGenerator) -> None:
    nll, tokens = gen.reference_nll([], PLAIN)
    ids = _text_ids(gen, PLAIN)
    assert tokens == len(ids) - 1  # every token but the first
    assert perplexity(nll, tokens) == pytest.approx(math.exp(_hf_loss(gen, ids)), rel=1e-4)


@pytest.mark.slow
def test_chat_prefers_the_right_answer(gen: TransformersGenerator) -> None:
    right, wrong = gen.reference_nll(FRANCE, RIGHT), gen.reference_nll(FRANCE, WRONG)
    assert right[1] == gen.text_tokens(RIGHT) and wrong[1] == gen.text_tokens(WRONG)
    assert perplexity(*right) < perplexity(*wrong)


@pytest.mark.slow
def test_chat_sum_equals_manual_gather(gen: TransformersGenerator) -> None:
    nll, _ = gen.reference_nll(FRANCE, RIGHT)
    prompt = _prompt_ids(gen, FRANCE)
    assert nll == pytest.approx(_manual_nll(gen, prompt + _text_ids(gen, RIGHT), len(prompt)), rel=1e-4)
    # the prompt matters: the same text scored without it is a different number
    assert nll != pytest.approx(gen.reference_nll([], RIGHT)[0], rel=1e-2)


@pytest.mark.slow
def test_empty_and_single_token_text(gen: TransformersGenerator) -> None:
    assert gen.reference_nll(FRANCE, "") == (0.0, 0)
    assert gen.reference_nll([], "") == (0.0, 0)
    assert gen.reference_nll([], "Paris") == (0.0, 0)  # one token: nothing before it to predict it from
    nll, tokens = gen.reference_nll(FRANCE, "Paris")
    assert tokens == 1 and nll > 0


@pytest.mark.slow
def test_overlong_prompt_loses_its_start(gen: TransformersGenerator, small_window: int) -> None:
    messages = [{"role": "user", "content": "Please read this. " * 40 + "What is the capital of France?"}]
    prompt, text = _prompt_ids(gen, messages), _text_ids(gen, RIGHT)
    assert len(prompt) > small_window
    nll, tokens = gen.reference_nll(messages, RIGHT)
    assert tokens == len(text)  # no text token dropped
    kept = prompt[len(prompt) + len(text) - small_window :]
    assert nll == pytest.approx(_manual_nll(gen, kept + text, len(kept)), rel=1e-4)


@pytest.mark.slow
def test_overlong_text_scores_its_start(gen: TransformersGenerator, small_window: int) -> None:
    text = "Paris is the capital and largest city of France. " * 6
    ids = _text_ids(gen, text)
    assert len(ids) > small_window
    # plain text: the first `window` tokens, as HF's loss on them
    nll, tokens = gen.reference_nll([], text)
    assert tokens == small_window - 1
    assert nll / tokens == pytest.approx(_hf_loss(gen, ids[:small_window]), rel=1e-4)
    # chat: the last prompt token, then the first window - 1 text tokens
    nll, tokens = gen.reference_nll(FRANCE, text)
    assert tokens == small_window - 1
    kept = _prompt_ids(gen, FRANCE)[-1:]
    assert nll == pytest.approx(_manual_nll(gen, kept + ids[: small_window - 1], 1), rel=1e-4)


@contextmanager
def _tokens_read(gen: TransformersGenerator) -> Iterator[list[int]]:
    """How many tokens each forward pass of the model reads while the context is open (a forward hook)."""
    read: list[int] = []
    hook = gen.model.register_forward_pre_hook(
        lambda _m, _a, kw: read.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        yield read
    finally:
        hook.remove()


@pytest.mark.slow
def test_keep_prompts_scores_without_rereading(gen: TransformersGenerator) -> None:
    """Two prompts of different lengths, generated as one left-padded batch: inside keep_prompts each
    reference reads only its own tokens (and the prompt's last), and scores what a fresh read scores."""
    from ragapp.generators import GenerationConfig

    long = [{"role": "user", "content": "Please read this note on capitals. " * 20 + "What is the capital of France?"}]
    city = [{"role": "user", "content": "Name a city."}]
    fresh = [gen.reference_nll(FRANCE, RIGHT), gen.reference_nll(long, RIGHT)]
    config = GenerationConfig(max_new_tokens=4)
    with gen.keep_prompts():
        gen.generate_batch([FRANCE, long], config)
        with _tokens_read(gen) as read:
            kept = [gen.reference_nll(FRANCE, RIGHT), gen.reference_nll(long, RIGHT)]
            other = gen.reference_nll(FRANCE, WRONG)  # same prompt, another text: the kept prompt serves it too
            gen.reference_nll(city, RIGHT)  # a prompt that was not generated from is read in full
    text = gen.text_tokens(RIGHT)
    assert read == [text + 1, text + 1, gen.text_tokens(WRONG) + 1, len(_prompt_ids(gen, city)) + text]
    for (nll, tokens), (want, want_tokens) in zip(kept, fresh, strict=True):
        assert tokens == want_tokens and nll == pytest.approx(want, rel=1e-4)
    assert other[0] == pytest.approx(gen.reference_nll(FRANCE, WRONG)[0], rel=1e-4)
    # once the context closes nothing is kept: the prompt is read again
    with _tokens_read(gen) as read:
        gen.reference_nll(FRANCE, RIGHT)
    assert read == [len(_prompt_ids(gen, FRANCE)) + text]
