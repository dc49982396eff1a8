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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "question": self.question,
            "answer": self.answer,
            "citations": [vars(c) for c in self.citations],
            "model": self.model,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.reward is not None:
            out.update(reward=self.reward, candidates=self.candidates)
        return out
