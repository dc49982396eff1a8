"""Faithfulness judged by a language model behind any OpenAI-compatible endpoint (`--judge-url`), Ragas-style.

Two steps per answer: the judge lists the answer's factual claims (a JSON array of strings), then says of
each claim whether the passages support it ({"verdict": "yes" | "no"}). faithfulness = supported / judged.

Small local judges often answer off-format, so replies are read leniently (code fences, a bare yes/no,
text after the JSON) and what still cannot be read is counted in `unparsed`, never guessed: an unreadable
verdict leaves its claim out of the score, an unreadable claims list leaves the answer without one.
HTTP failures are retried, then reported as the answer's `error`; they never stop a run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import httpx

from ragapp.attribution import strip_marks
from ragapp.errors import UsageError

TIMEOUT_S = 120.0  # one reply; a small local model on a CPU can take most of a minute for the claims list
RETRIES = 2  # further attempts after a connection error, a timeout, a 429 or a 5xx
BACKOFF_S = 1.0  # before the first retry; doubles with each
CLAIMS_TOKENS = 512
VERDICT_TOKENS = 32

CLAIMS_PROMPT = """Question: {question}

Answer: {answer}

List every factual claim the answer makes, each as a short sentence that stands on its own.
Reply with only a JSON array of strings, for example ["The tool skips hidden files.", "Links are not followed."].
Reply [] if the answer makes no factual claim."""

VERDICT_PROMPT = """Passages:
{passages}

Claim: {claim}

Do the passages support the claim? Reply with only JSON: {{"verdict": "yes"}} if they do, {{"verdict": "no"}} if not."""

_FENCE = re.compile(r"```[a-zA-Z]*")
_FIRST_WORD = re.compile(r"[a-zA-Z]+")
_YES, _NO = frozenset({"yes", "true", "supported"}), frozenset({"no", "false", "unsupported"})


class JudgeError(Exception):
    """The judge could not be asked (after retries) or answered something that is not a chat completion."""


@dataclass(frozen=True)
class Verdict:
    claim: str
    supported: bool | None  # None: the judge's verdict could not be read


@dataclass
class Judgement:
    """The judge's work on one answer."""

    model: str
    claims: list[Verdict] = field(default_factory=list)
    unparsed: int = 0  # replies that could not be read: the claims list (then `claims` is empty) or verdicts
    error: str | None = None  # the judge failed (HTTP, after retries): no score, the run goes on

    @property
    def faithfulness(self) -> float | None:
        """Supported claims / claims with a verdict; None when no claim got one (or the judge failed)."""
        judged = [v.supported for v in self.claims if v.supported is not None]
        if self.error is not None or not judged:
            return None
        return sum(judged) / len(judged)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unfence(text: str) -> str:
    return _FENCE.sub("", text).strip()


def _first_json(text: str, opener: str) -> Any:
    """The JSON value starting at the first `opener` in `text` (text after it is ignored); None if none parses."""
    start = text.find(opener)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None
    return value


def parse_claims(text: str) -> list[str] | None:
    """A JSON array of strings (or {"claims": [...]}), fenced or followed by text; None if unreadable.
    Repeated claims (a small model looping) count once."""
    body = _unfence(text)
    value = _first_json(body, "[")
    if value is None:
        obj = _first_json(body, "{")
        value = obj.get("claims") if isinstance(obj, dict) else None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        return None
    return list(dict.fromkeys(c.strip() for c in value if c.strip()))


def _word(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    word = value.strip().strip(".!\"'").lower()
    return True if word in _YES else False if word in _NO else None


def parse_verdict(text: str) -> bool | None:
    """{"verdict": "yes"|"no"} (fenced, followed by text, any case), or a reply starting with a bare
    yes/no; None if unreadable."""
    body = _unfence(text)
    obj = _first_json(body, "{")
    if isinstance(obj, dict):
        verdict = {str(k).lower(): v for k, v in obj.items()}.get("verdict")
        return _word(verdict)
    first = _FIRST_WORD.search(body)
    return _word(first.group()) if first and first.start() == 0 else None


def _passages(passages: Sequence[tuple[int, str]]) -> str:
    return "\n\n".join(f"[{n}] {text.strip()}" for n, text in passages)


class Judge:
    """A chat model at an OpenAI-compatible `url` (e.g. http://127.0.0.1:8000/v1), asked at temperature 0."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = TIMEOUT_S,
        retries: int = RETRIES,
        backoff: float = BACKOFF_S,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)
        self.retries, self.backoff = retries, backoff
        self.model = model or self._first_model()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON reply; retried on connection errors, timeouts, 429 and 5xx; JudgeError when it fails."""
        wait, problem = self.backoff, ""
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, self.url + path, json=body)
                if response.status_code != 429 and response.status_code < 500:
                    response.raise_for_status()
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPStatusError as exc:  # 4xx: asking again will not help
                status = exc.response.status_code
                raise JudgeError(f"{method} {self.url}{path}: HTTP {status}: {exc.response.text[:200]}") from None
            except (httpx.TransportError, ValueError) as exc:  # ValueError: a reply that is not JSON
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                time.sleep(wait)
                wait *= 2
        raise JudgeError(f"{method} {self.url}{path} failed after {self.retries + 1} attempts: {problem}")

    def _first_model(self) -> str:
        """The server's first model (GET /models), for when no --judge-model is given."""
        try:
            models = self._request("GET", "/models")["data"]
            return str(models[0]["id"])
        except JudgeError as exc:
            raise UsageError(f"--judge-url: cannot list the judge's models: {exc}") from None
        except (KeyError, IndexError, TypeError):
            raise UsageError(f"--judge-url: {self.url}/models lists no model; name one with --judge-model") from None

    def complete(self, prompt: str, max_tokens: int) -> str:
        """The judge's reply to one user message."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        reply = self._request("POST", "/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url}/chat/completions returned no message: {str(reply)[:200]}") from None
        return content if isinstance(content, str) else ""

    def judge(self, question: str, answer: str, passages: Sequence[tuple[int, str]]) -> Judgement:
        """Claims of `answer` and whether the numbered `passages` support each; HTTP failures become `error`."""
        out = Judgement(self.model)
        try:
            reply = self.complete(CLAIMS_PROMPT.format(question=question, answer=strip_marks(answer)), CLAIMS_TOKENS)
            claims = parse_claims(reply)
            if claims is None:
                out.unparsed += 1
                return out
            shown = _passages(passages)
            for claim in claims:
                prompt = VERDICT_PROMPT.format(passages=shown, claim=claim)
                verdict = parse_verdict(self.complete(prompt, VERDICT_TOKENS))
                out.unparsed += verdict is None
                out.claims.append(Verdict(claim, verdict))
        except JudgeError as exc:
            out.error = str(exc)
        return out
