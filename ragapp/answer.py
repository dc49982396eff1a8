"""What `ask` returns: the answer and the numbered passages it cites.

A module of its own so that everything that only reads answers (the CLI, the service, the agent,
evaluation) imports neither the App nor anything it loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragapp.generators.base import Message
from ragapp.search import SearchHit


@dataclass
class Citation:
    n: int
    source: str
    page: int | None
    anchor: str | None
    heading: str | None
    chunk_id: int
    score: float
    cited: bool  # the answer refers to [n]
    text: str

    @classmethod
    def of(cls, n: int, hit: SearchHit, cited: bool, text: str | None = None) -> Citation:
        """Passage `n`, from `hit`; `text` is what the model saw when the passage was cut to fit."""
        return cls(
            n, hit.source, hit.page, hit.anchor, hit.heading, hit.chunk_id, hit.score, cited,
            hit.text if text is None else text,
        )  # fmt: skip


@dataclass(frozen=True)
class Quote:
    """Where a sentence's support is: characters [start, end) of chunk `chunk_id`'s text (`Citation.text`)."""

    chunk_id: int
    start: int
    end: int


@dataclass
class Sentence:
    """One sentence of the answer and the passages that support it (see ragapp.attribution)."""

    text: str
    citations: list[int]  # passage numbers, best support first; [] = supported by none
    support: float  # 0..1: how well the best passage supports it
    quote: Quote | None  # the supporting span of the best passage; None when unsupported

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "citations": self.citations,
            "support": round(self.support, 4),
            "quote": None if self.quote is None else vars(self.quote),
        }


@dataclass
class Answer:
    question: str
    answer: str
    citations: list[Citation]
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    # What produced the answer, for evaluation and debugging; not part of `to_dict()`.
    hits: list[SearchHit] = field(default_factory=list, repr=False)
    messages: list[Message] = field(default_factory=list, repr=False)
    reward: float | None = None  # the reward model's score, when one chose the answer (`best_of`)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every sampled answer and its reward
    sentences: list[Sentence] = field(default_factory=list)
    # No passage was relevant enough, or none supported the draft: `answer` says so (answer.not_found).
    abstained: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "question": self.question,
            "answer": self.answer,
            "citations": [vars(c) for c in self.citations],
            "sentences": [s.to_dict() for s in self.sentences],
            "abstained": self.abstained,
            "model": self.model,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.reward is not None:
            out.update(reward=self.reward, candidates=self.candidates)
        return out
