"""The one interface every generation backend implements, and the one generation config they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

Message = dict[str, str]  # OpenAI chat format: {"role": "system" | "user" | "assistant", "content": ...}


class GenerationConfig(BaseModel):
    """Sampling settings; the same meaning in every backend. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_new_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_k: int = Field(default=50, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
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

    def load(self) -> Self:
        """Load the model (or connect to the server) once; returns the generator itself, ready to use."""
        ...

    def chat_model(self, sampling: GenerationConfig, context_window: int) -> BaseChatModel:
        """The LangChain chat model the agent drives: the server's own tool calls where the backend has them,
        else ragapp.react_chat's text protocol over this generator, its prompts within `context_window`."""
        ...

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

    def keep_prompts(self) -> AbstractContextManager[None]:
        """While open, `reference_nll` may reuse what the last generation read of the same prompt, so an eval
        that scores the reference after generating the answer reads the prompt once. A backend that keeps no
        such state returns a context that does nothing."""
        ...

    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str: ...

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]: ...

    def generate_batch(self, conversations: Sequence[Sequence[Message]], config: GenerationConfig) -> list[str]: ...

    def close(self) -> None:
        """Free the model (and stop its engine processes); the generator cannot be used afterwards."""
        ...


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(hits)] if hits else text


class StopFilter:
    """Passes streamed text through, holding back a tail that could still grow into a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add a piece; return what is now safe to emit. Sets `stopped` once a stop string appears."""
        self.text += piece
        # Nothing before `sent` can start a stop string: it was emitted only once `hold` more chars followed.
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        end = min(hits) if hits else max(self.sent, len(self.text) - self.hold)
        self.stopped = bool(hits)
        out, self.sent = self.text[self.sent : end], end
        return out

    def finish(self) -> str:
        """The held-back tail once the stream has ended without a stop string."""
        out, self.sent = ("" if self.stopped else self.text[self.sent :]), len(self.text)
        return out


def scoring_layout(prompt: list[int], target: list[int], window: int) -> tuple[list[int], list[int]]:
    """Fit (prompt, target) token ids into `window` for `reference_nll`, the same way in every backend.

    Over-long input loses the start of the prompt, never the text; a text longer than the window is scored
    on its first tokens, after at least one prompt token. With no prompt the text is scored as plain text:
    its first token is only context, as in Hugging Face's `labels=input_ids` loss.
    """
    if prompt:
        target = target[: window - 1]
        prompt = prompt[max(0, len(prompt) + len(target) - window) :]
    else:
        target = target[:window]
        prompt, target = target[:1], target[1:]
    return prompt, target
