"""Any OpenAI-compatible server (first of all vLLM's, as started by `ragapp model serve`) as a generator.

Generation goes through `/v1/chat/completions` with the official `openai` client (timeouts, retries with
backoff, streaming). Fitting passages into the window needs exact token counts: vLLM's `/tokenize`
gives them, with the server's context length; servers without it get a conservative estimate instead.
Perplexity needs prompt log-probabilities (`prompt_logprobs`, a vLLM extension of `/v1/completions`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from ragapp.errors import GenerationError, ScoringUnsupported
from ragapp.generators.base import (
    AnswerFilter,
    GenerationConfig,
    Message,
    cut_answer,
    scoring_layout,
    warn_ngram_ignored,
)

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
CHARS_PER_TOKEN = 3.0  # estimate used only without /tokenize: low on purpose, so prompts are never too long
log = logging.getLogger(__name__)


def presence_penalty(repetition_penalty: float) -> float:
    """OpenAI's presence_penalty for a transformers-style repetition_penalty, for servers without the latter.

    Both penalise a token once for being present, however often it was: repetition_penalty takes
    l·(1 − 1/r) off a positive logit l, presence_penalty takes p off every logit. The exact match depends on
    l, which a client never sees, so the usual range of r (1 to 1.2, the CTRL paper's value) is spread over
    OpenAI's range: p = 10·(r − 1), clamped to [-2, 2] (1.05 → 0.5, 1.1 → 1.0, 1.2 and up → 2.0).
    presence_penalty also leaves the prompt's tokens alone, which repetition_penalty does not.
    """
    return max(-2.0, min(2.0, round(10.0 * (repetition_penalty - 1.0), 6)))


class OpenAIGenerator:
    """`Generator` talking to a chat-completions server; thread-safe, batches are concurrent requests."""

    device = "remote"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        model: str = "",
        api_key: str = "",
        timeout: float = 120.0,
        max_retries: int = 2,
        context_window: int = 2048,
        concurrency: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "") or "none"
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self._window = context_window
        self._client: Any = None
        self._http: Any = None
        self._exact_counts: bool | None = None  # unknown until the first /tokenize
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.vllm_server = False  # learnt in load(): the served model is vLLM's, which takes repetition_penalty
        self._warned_ngram = False

    @property
    def root_url(self) -> str:
        """The server root: vLLM serves /tokenize and /health beside /v1, not under it."""
        return self.base_url.removesuffix("/v1")

    # -- connection ------------------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """openai/httpx exceptions → one GenerationError sentence naming the server."""
        import httpx
        import openai

        try:
            yield
        except openai.APITimeoutError:
            raise GenerationError(
                f"{what}: the generation server at {self.base_url} did not answer within {self.timeout:g} s "
                f"(tried {self.max_retries + 1} times); raise generation.timeout or check the server"
            ) from None
        except (openai.APIConnectionError, httpx.TransportError) as exc:
            cause = exc.__cause__ or exc
            raise GenerationError(
                f"{what}: cannot reach the generation server at {self.base_url} ({type(cause).__name__}: {cause}); "
                "is it running? Start one with `ragapp model serve`, or set generation.base_url"
            ) from None
        except openai.APIStatusError as exc:
            raise GenerationError(
                f"{what}: the server at {self.base_url} answered {exc.status_code}: {_detail(exc)}"
            ) from None
        except openai.APIError as exc:
            raise GenerationError(f"{what}: the server at {self.base_url} failed: {exc}") from None

    def load(self) -> OpenAIGenerator:
        """Connect, check the server answers, and pick its first model when none is configured."""
        with self._lock:
            if self._client is not None:
                return self
            import httpx
            import openai

            client = openai.OpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=self.max_retries
            )
            with self._errors("listing models"):
                owners = {m.id: getattr(m, "owned_by", "") for m in client.models.list()}
            models = list(owners)
            if not self.model_id:
                if not models:
                    raise GenerationError(f"the server at {self.base_url} serves no model")
                self.model_id = models[0]
            elif models and self.model_id not in models:
                raise GenerationError(
                    f"the server at {self.base_url} does not serve {self.model_id!r} (it serves: {', '.join(models)})"
                )
            self.vllm_server = owners.get(self.model_id) == "vllm"
            headers = {"Authorization": f"Bearer {self.api_key}"}
            self._http = httpx.Client(base_url=self.root_url, timeout=self.timeout, headers=headers)
            self._client = client
            return self

    @property
    def client(self) -> Any:
        return self.load()._client

    def chat_model(self, sampling: GenerationConfig, context_window: int) -> BaseChatModel:
        """LangChain's ChatOpenAI on this server, which calls tools itself (OpenAI; vLLM started with
        --enable-auto-tool-choice --tool-call-parser). Call after `load`: the model name is resolved then."""
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        fields, extra = self._sampling(sampling)
        return ChatOpenAI(
            model=self.model_id,
            base_url=self.base_url,
            api_key=SecretStr(self.api_key),
            timeout=self.timeout,
            max_retries=self.max_retries,
            temperature=sampling.temperature,
            max_completion_tokens=sampling.max_new_tokens,
            extra_body=extra or None,
            **fields,  # top_p, seed, presence_penalty: ChatOpenAI's own fields
        )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._http.close()
            self._client = self._http = None

    # -- token counts ----------------------------------------------------------------------------
    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """vLLM's /tokenize, or None when the server has no such endpoint (then counts are estimated)."""
        self.load()
        if self._exact_counts is False:
            return None
        with self._errors("counting tokens"):
            response = self._http.post("/tokenize", json={"model": self.model_id, **body})
        if response.status_code in (404, 405):
            self._exact_counts = False
            return None
        if response.status_code != 200:
            raise GenerationError(
                f"counting tokens: the server at {self.base_url} answered {response.status_code}: {response.text[:300]}"
            )
        data = response.json()
        self._exact_counts = True
        if isinstance(data.get("max_model_len"), int):
            self._window = data["max_model_len"]
        return data

    @property
    def exact_counts(self) -> bool:
        """True when token counts come from the server's tokenizer, False when they are estimates."""
        if self._exact_counts is None:
            self._tokenize({"prompt": "", "add_special_tokens": False})
        return bool(self._exact_counts)

    @property
    def context_window(self) -> int:
        _ = self.exact_counts  # learns the server's max_model_len when it tells
        return self._window

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int] | None:
        data = self._tokenize({"messages": [dict(m) for m in messages], "add_generation_prompt": True})
        return None if data is None else list(data["tokens"])

    def count_tokens(self, messages: Sequence[Message]) -> int:
        key = json.dumps(list(messages), sort_keys=True)
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        ids = self._prompt_ids(messages)
        if ids is None:
            chars = sum(len(m.get("content", "")) for m in messages)
            count = int(chars / CHARS_PER_TOKEN) + 8 * (len(messages) + 1)
        else:
            count = len(ids)
        with self._lock:
            self._counts[key] = count
            while len(self._counts) > 256:
                self._counts.popitem(last=False)
        return count

    def _text_ids(self, text: str) -> list[int] | None:
        data = self._tokenize({"prompt": text, "add_special_tokens": False})
        return None if data is None else list(data["tokens"])

    def text_tokens(self, text: str) -> int:
        ids = self._text_ids(text)
        return len(ids) if ids is not None else int(len(text) / CHARS_PER_TOKEN) + 1

    # -- generation ------------------------------------------------------------------------------
    def _request(self, messages: Sequence[Message], config: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [dict(m) for m in messages],
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
        }
        stops = [s for s in config.stop if s]
        if stops:
            body["stop"] = stops
        fields, extra = self._sampling(config)
        body.update(fields)
        if extra:
            body["extra_body"] = extra
        return body

    def _sampling(self, config: GenerationConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """Request fields for top-p, seed and penalties beyond temperature: OpenAI's own, and the extra ones
        (not part of OpenAI's API; vLLM and most compatible servers accept them)."""
        fields: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if not config.greedy:
            fields["top_p"] = config.top_p
            if config.seed is not None:
                fields["seed"] = config.seed
            if config.top_k > 0:
                extra["top_k"] = config.top_k
        if config.repetition_penalty != 1.0:
            if self.vllm_server:
                extra["repetition_penalty"] = config.repetition_penalty
            else:
                fields["presence_penalty"] = presence_penalty(config.repetition_penalty)
        self._warned_ngram = warn_ngram_ignored(log, config, f"the server at {self.base_url}", self._warned_ngram)
        return fields, extra

    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str:
        with self._errors("generating"):
            response = self.client.chat.completions.create(**self._request(messages, config))
        if not response.choices:
            raise GenerationError(f"the server at {self.base_url} returned no choices")
        return cut_answer(response.choices[0].message.content or "", config.stop)

    def generate_batch(self, conversations: Sequence[Sequence[Message]], config: GenerationConfig) -> list[str]:
        """Concurrent requests: a vLLM server batches whatever is in flight at once."""
        if not conversations:
            return []
        self.load()
        workers = max(1, min(self.concurrency, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ragapp-openai") as pool:
            return list(pool.map(lambda c: self.generate(c, config), conversations))

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]:
        filt = AnswerFilter(config.stop)  # a stop string or a repeated sentence closes the stream
        with self._errors("generating"):
            chunks = self.client.chat.completions.create(**self._request(messages, config), stream=True)
            finished = False
            try:
                for chunk in chunks:
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    finished = finished or bool(chunk.choices and chunk.choices[0].finish_reason)
                    if piece:
                        out = filt.push(piece)
                        if out:
                            yield out
                        if filt.stopped:
                            break
                if not (finished or filt.stopped):  # the connection ended cleanly, but the answer did not
                    raise GenerationError(
                        f"generating: the server at {self.base_url} closed the stream before the answer was finished"
                    )
                tail = filt.finish()
                if tail:
                    yield tail
            finally:
                chunks.close()

    # -- scoring ---------------------------------------------------------------------------------
    def keep_prompts(self) -> AbstractContextManager[None]:
        """A server keeps its own prompt state, if any; this client has none to keep."""
        return nullcontext()

    def reference_nll(self, messages: Sequence[Message], text: str) -> tuple[float, int]:
        """One /v1/completions call on the token ids with `prompt_logprobs=0` (vLLM), `max_tokens=1`."""
        prompt = (self._prompt_ids(messages) if messages else []) or []
        target = self._text_ids(text)
        if target is None or (messages and not prompt):
            raise ScoringUnsupported(
                f"the server at {self.base_url} has no /tokenize endpoint, so ragapp cannot score text"
            )
        prompt, target = scoring_layout(prompt, target, self.context_window - 1)
        if not target:
            return 0.0, 0
        with self._errors("scoring a reference"):
            response = self.client.completions.create(
                model=self.model_id,
                prompt=prompt + target,
                max_tokens=1,
                temperature=0.0,
                extra_body={"prompt_logprobs": 0},
            )
        scored = (response.choices[0].model_extra or {}).get("prompt_logprobs") if response.choices else None
        if not scored:
            raise ScoringUnsupported(f"the server at {self.base_url} returns no prompt log-probabilities")
        nll = 0.0
        for entry, token in zip(scored[len(prompt) :], target, strict=True):
            nll -= float(entry[str(token)]["logprob"])
        return nll, len(target)


def _detail(exc: Any) -> str:
    """The server's own error message when the body has one (OpenAI and vLLM put it in error.message)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(body.get("message"), str):
            return body["message"][:500]
    return str(getattr(exc, "message", exc))[:500]
