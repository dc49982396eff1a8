"""Prompt expansion: number the retrieved passages and fit them, with the question, into the model's window."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragapp.config import PromptSettings
from ragapp.errors import UsageError
from ragapp.generators import Generator, Message
from ragapp.search import SearchHit

_FIELD = re.compile(r"\{(context|question)\}")
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class Passage:
    n: int
    hit: SearchHit
    text: str  # the hit's text, possibly cut to fit the window


def fill(template: str, context: str, question: str) -> str:
    """Substitute both fields in one pass, so braces inside passages are never interpreted."""
    values = {"context": context, "question": question}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def render_context(passages: Sequence[Passage]) -> str:
    """Each passage as "[n] heading" then its text. File names are left out on purpose: measured on
    ragapp's docs with SmolLM2-135M, the model copied "(file.md, ...)" labels into its answers."""
    return "\n\n".join(f"[{p.n}] {p.hit.heading}\n{p.text}" if p.hit.heading else f"[{p.n}] {p.text}" for p in passages)


def build_messages(settings: PromptSettings, question: str, passages: Sequence[Passage]) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": settings.system}]
    for example in settings.examples:
        messages.append({"role": "user", "content": fill(settings.template, example.context, example.question)})
        messages.append({"role": "assistant", "content": example.answer})
    messages.append({"role": "user", "content": fill(settings.template, render_context(passages), question)})
    return messages


def fit_prompt(
    generator: Generator, settings: PromptSettings, question: str, hits: Sequence[SearchHit], budget: int
) -> tuple[list[Message], list[Passage]]:
    """Keep the best-ranked passages that fit `budget` tokens; cut the last one rather than overflow."""
    passages = [Passage(n, hit, hit.text) for n, hit in enumerate(hits, start=1)]

    def size(ps: Sequence[Passage]) -> int:
        return generator.count_tokens(build_messages(settings, question, ps))

    if size([]) > budget:
        # The caller's input is too long (a 400 over HTTP, like any other bad request).
        raise UsageError(f"the question and prompt template alone exceed the {budget}-token budget")
    while passages and size(passages) > budget:
        if size(passages[:-1]) > budget:
            passages.pop()
            continue
        # Dropping the last passage fits: instead keep as much of it as fits (binary search on length).
        last = passages[-1]
        lo, hi = 0, len(last.text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size([*passages[:-1], Passage(last.n, last.hit, last.text[:mid])]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        passages[-1] = Passage(last.n, last.hit, last.text[:lo])
        if lo < 40:  # a sliver is noise, not evidence
            passages.pop()
        break
    return build_messages(settings, question, passages), passages


def cited_numbers(answer: str) -> set[int]:
    return {int(n) for group in _CITATION.findall(answer) for n in group.split(",")}
