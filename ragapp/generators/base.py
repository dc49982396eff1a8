"""The one interface every generation backend implements, and the one generation config they share."""

from __future__ import annotations

import logging
import re
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
    # Against loops: 1.0 / 0 = off. repetition_penalty divides the logits of tokens already in the prompt or the
    # answer (transformers' and vLLM's meaning; OpenAI servers get presence_penalty); no_repeat_ngram_size
    # forbids repeating any run of that many answer tokens (transformers only).
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)
    no_repeat_ngram_size: int = Field(default=0, ge=0, le=64)

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


def warn_ngram_ignored(log: logging.Logger, config: GenerationConfig, backend: str, warned: bool) -> bool:
    """Warn (once: `warned` says whether it already did) that `backend` has no `no_repeat_ngram_size`;
    returns whether it has warned now."""
    if config.no_repeat_ngram_size and not warned:
        log.warning(
            "no_repeat_ngram_size=%d is ignored: %s has no such setting (repetition_penalty works, and repeated "
            "sentences are still cut)",
            config.no_repeat_ngram_size,
            backend,
        )
        return True
    return warned


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


_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")  # after . ! ? that whitespace follows, or before a newline
_MARK = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")  # a citation mark: [1], [1, 2]
_OPEN_MARK = re.compile(r"\[(?:\d+(?:\s*,\s*\d+)*\s*(?:,\s*)?)?$")  # a mark's start, ending a partial sentence
_TRAILING = re.compile(r"[\s.,;:!?]+$")
_CODE = re.compile(r"[{}=<>]|\w\(")  # braces, assignments, comparisons, calls: a line of code, not prose


def _sentence_key(text: str) -> str:
    """A sentence as compared for repeats: lowercase, citation marks dropped, whitespace collapsed, no
    trailing punctuation. Growing a sentence only ever extends its key, so a partial sentence whose key is
    no prefix of an earlier one can never become a repeat of it."""
    text = _OPEN_MARK.sub("", _MARK.sub(" ", text.lower()))
    return _TRAILING.sub("", " ".join(text.split()))


def _counts(key: str) -> bool:
    """Whether a sentence is long and prose-like enough that writing it twice is a loop (`}`, `Yes.`, a
    short list item or a line of code may well recur in a good answer)."""
    visible = key.replace(" ", "")
    letters = sum(c.isalpha() for c in visible)
    return len(key) >= 15 and key.count(" ") >= 2 and letters >= 0.6 * len(visible) and not _CODE.search(key)


class RepeatGuard:
    """Ends streamed text where it starts repeating a sentence it already wrote: small models loop.

    A sentence ends at . ! ? followed by whitespace, or at a newline; sentences compare by `_sentence_key`
    and only those that `_counts` take part. Text passes straight through except the current partial
    sentence while its key is a prefix of an earlier sentence's; a completed repeat is dropped (with the
    whitespace before it) and sets `stopped`. What comes out depends only on the text, never on how it was
    cut into pieces, so `cut_at_repeat` on a whole answer gives what the stream gave.
    """

    def __init__(self) -> None:
        self.text = ""
        self.sent = 0  # characters emitted
        self.start = 0  # where the current partial sentence starts (with the whitespace before it)
        self.scan = 0  # where the search for the next sentence end resumes
        self.seen: set[str] = set()
        self.stopped = False

    def _held(self) -> bool:
        """Whether the partial sentence may still become a repeat: once released, it never can."""
        if self.sent > self.start or not self.seen:
            return False
        key = _sentence_key(self.text[self.start :])
        return any(s.startswith(key) for s in self.seen)

    def push(self, piece: str) -> str:
        """Add a piece; return what is now safe to emit. Sets `stopped` at the first repeated sentence."""
        if self.stopped:
            return ""
        self.text += piece
        for m in _SENTENCE_END.finditer(self.text, self.scan):
            end = m.start() if m.group() == "\n" else m.end()
            sentence = self.text[self.start : end]
            key = _sentence_key(sentence)
            if _counts(key):
                if key in self.seen:
                    self.stopped = True
                    out, self.sent = self.text[self.sent : self.start], max(self.sent, self.start)
                    return out
                self.seen.add(key)
            if sentence.strip():  # blank lines go with the sentence after them, and with it if it repeats
                self.start = end
            self.scan = m.end()
        end = max(self.sent, self.start if self._held() else len(self.text))
        out, self.sent = self.text[self.sent : end], end
        return out

    def finish(self) -> str:
        """The held-back tail once the text has ended: dropped when it repeats an earlier sentence, or
        when it was cut off (no closing . ! ?) while still reading like the start of one."""
        tail, partial, held = self.text[self.sent :], self.text[self.start :], self._held()
        self.sent = len(self.text)
        key = _sentence_key(partial)
        if self.stopped or not tail:
            return ""
        if not key or not held:
            return tail
        if partial.rstrip()[-1:] in (".", "!", "?"):  # a whole sentence: only an exact repeat goes
            return "" if _counts(key) and key in self.seen else tail
        return ""


def cut_at_repeat(text: str) -> str:
    """`text` up to the first sentence it repeats (see `RepeatGuard`), as a stream of it would give."""
    guard = RepeatGuard()
    return guard.push(text) + guard.finish()


def repeats(text: str) -> bool:
    """Whether `text` already holds a completed repeated sentence, so generating more is wasted."""
    guard = RepeatGuard()
    guard.push(text)
    return guard.stopped


def cut_answer(text: str, stops: Sequence[str]) -> str:
    """A whole generated text as every backend returns it: up to a stop string, then up to a repeat."""
    return cut_at_repeat(cut_at_stop(text, stops))


class AnswerFilter:
    """`cut_answer` for streamed text: stop strings first, then the repeat guard; joins to `cut_answer`."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stop_filter = StopFilter(stops)
        self.guard = RepeatGuard()

    @property
    def stopped(self) -> bool:
        """The answer is over: read no more (and cancel generation where the backend can)."""
        return self.stop_filter.stopped or self.guard.stopped

    def push(self, piece: str) -> str:
        return self.guard.push(self.stop_filter.push(piece))

    def finish(self) -> str:
        return self.guard.push(self.stop_filter.finish()) + self.guard.finish()


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
