"""Prompt expansion: numbering, template filling, fitting the token budget, reading citations.

The token counter here is a FAKE (one token per word) so the budget arithmetic can be checked
exactly; the real tokenizer is exercised in the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ragapp.config import PromptExample, PromptSettings
from ragapp.errors import RagappError
from ragapp.prompt import build_messages, cited_numbers, fill, fit_prompt
from ragapp.search import SearchHit


class WordCounter:
    """Fake generator: counts whitespace-separated words of all messages."""

    context_window = 10_000

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) for m in messages)


def hit(n: int, words: int) -> SearchHit:
    return SearchHit(
        n, 1.0 - n / 100, " ".join(f"w{n}" for _ in range(words)), f"/docs/f{n}.md", None, f"H{n}", None, None, 0, 0
    )


SETTINGS = PromptSettings(system="sys", template="{context}\nQ: {question}")


def test_fill_does_not_interpret_braces_in_passages() -> None:
    assert fill("{context} | {question}", "a {question} b {x}", "q?") == "a {question} b {x} | q?"


def test_passages_are_numbered_in_rank_order_with_headings() -> None:
    messages, passages = fit_prompt(WordCounter(), SETTINGS, "why?", [hit(1, 3), hit(2, 3)], budget=1000)
    assert [p.n for p in passages] == [1, 2]
    user = messages[-1]["content"]
    assert user.index("[1] H1\nw1 w1 w1") < user.index("[2] H2\nw2 w2 w2")
    assert "f1.md" not in user
    assert user.endswith("Q: why?")
    assert messages[0] == {"role": "system", "content": "sys"}


def test_lowest_ranked_passages_are_dropped_then_the_last_is_cut() -> None:
    counter = WordCounter()
    hits = [hit(1, 50), hit(2, 50), hit(3, 50), hit(4, 50)]
    messages, passages = fit_prompt(counter, SETTINGS, "why?", hits, budget=140)
    assert counter.count_tokens(messages) <= 140
    assert [p.n for p in passages] == [1, 2, 3]
    assert passages[0].text == hits[0].text and passages[1].text == hits[1].text
    assert 0 < len(passages[2].text) < len(hits[2].text)


def test_a_single_long_passage_is_truncated_not_dropped() -> None:
    counter = WordCounter()
    messages, passages = fit_prompt(counter, SETTINGS, "why?", [hit(1, 500)], budget=100)
    assert len(passages) == 1 and counter.count_tokens(messages) <= 100


def test_question_larger_than_budget_is_an_error() -> None:
    with pytest.raises(RagappError, match="exceed the 5-token budget"):
        fit_prompt(WordCounter(), SETTINGS, "a very long question indeed here", [hit(1, 5)], budget=5)


def test_few_shot_examples_become_turns_before_the_question() -> None:
    settings = PromptSettings(
        system="sys",
        template="{context}\nQ: {question}",
        examples=[PromptExample(question="q1", context="[1] c1", answer="a1 [1]")],
    )
    messages = build_messages(settings, "real?", [])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "[1] c1\nQ: q1" and messages[2]["content"] == "a1 [1]"


def test_cited_numbers() -> None:
    assert cited_numbers("Use --sync [2]. Also [1, 3] and [4][5]; not [x] or [ 6 ].") == {1, 2, 3, 4, 5}
