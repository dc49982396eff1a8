"""The one interface every generation backend implements, and the one generation config they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, str]  # OpenAI chat format: {"role": "system" | "user" | "assistant", "content": ...}


class GenerationConfig(BaseModel):
    """Sampling settings; the same meaning in every backend. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_new_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = 0
    stop: list[str] = Field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@runtime_checkable
class Generator(Protocol):
    """A chat model. Messages go in, text comes out; stop strings are never part of the output."""

    model_id: str
    device: str

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the fully rendered prompt (chat template included), for trimming context."""
        ...

    def text_tokens(self, text: str) -> int:
        """Tokens of plain text (no special tokens, no template), for completion and reference lengths."""
        ...

    def reference_nll(self, messages: Sequence[Message], text: str) -> tuple[float, int]:
        """(sum of natural-log NLLs, tokens scored) of `text` as the assistant's reply to `messages`.

        Scores how likely the model finds a reference answer, for perplexity. With no messages `text` is
        scored as plain text: every token but the first, each from the ones before.
        """
        ...

    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str: ...

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]: ...

    def generate_batch(self, conversations: Sequence[Sequence[Message]], config: GenerationConfig) -> list[str]: ...
