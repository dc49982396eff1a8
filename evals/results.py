"""What an evaluation run produced, as plain data: what the store saves and reports and comparisons read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

Metrics = dict[str, float | None]  # None: the metric does not apply to this item (no expected sources, say)


@dataclass
class ItemResult:
    """One dataset row: the answer given, what it was scored against, and its scores."""

    position: int  # 1-based line number in the dataset file
    item_id: str
    question: str
    reference: str
    prediction: str
    expected_sources: list[str] = field(default_factory=list)
    # Citation dicts as in `Answer.to_dict()`: n, source, page, anchor, heading, chunk_id, score, cited, text
    citations: list[dict[str, Any]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=dict)
    # retrieve_s, generate_s, latency_s, prompt_tokens, completion_tokens, reference_tokens
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the item could not be answered or scored; it has no metrics
    # `Sentence.to_dict()` of each sentence: text, citations (passage numbers), support, quote. [] in runs
    # stored before attribution, and in `eval score` rows that could not be attributed (no question).
    sentences: list[dict[str, Any]] = field(default_factory=list)
    abstained: bool = False  # the answer is `answer.not_found`: nothing relevant or nothing supported
    # The LLM judge's work (`--judge-url`), `Judgement.to_dict()`: model, claims and verdicts, unparsed, error.
    judge: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NO_QUESTION = "(no question)"


def shown_question(question: str) -> str:
    """An item as people see it: `eval score` rows need no question, and an empty cell would read as a bug."""
    return question or NO_QUESTION


@dataclass
class Problem:
    """A dataset line that was not evaluated, and why."""

    line: int
    reason: str


@dataclass
class RunResult:
    id: int
    name: str
    kind: str  # "pipeline" (ragapp answered) | "score" (predictions made elsewhere)
    status: str  # running | completed | interrupted | failed
    dataset: str
    started_at: datetime
    finished_at: datetime | None
    seconds: float
    config: dict[str, Any]  # snapshot: retrieval k, generation settings, prompt, rouge stemming...
    models: dict[str, str]  # {"embedding": ..., "generator": ...}
    aggregates: Metrics  # metric name -> run-level value (BLEU is corpus BLEU; others are means)
    problems: list[Problem] = field(default_factory=list)
    items: list[ItemResult] = field(default_factory=list)
    total: int = 0  # dataset rows to evaluate (lines that parsed)
    saved: int = 0  # of those, how many have been answered and saved (all of them once completed)

    @property
    def scored(self) -> list[ItemResult]:
        return [i for i in self.items if i.error is None]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat(timespec="seconds")
        out["finished_at"] = self.finished_at.isoformat(timespec="seconds") if self.finished_at else None
        return out
