"""The in-process generator: a local Hugging Face causal LM run with transformers (CPU by default).

torch and transformers are imported on first use, so building a generator (and the CLI) stays fast;
the model is loaded once per instance, on first use or by `load()`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragapp.generators.adapters import LORA, PROMPT_TUNING, read_adapter
from ragapp.generators.base import (
    AnswerFilter,
    GenerationConfig,
    Message,
    cut_answer,
    cut_at_stop,
    repeats,
    scoring_layout,
)
from ragapp.generators.gguf import model_name, resolve_model

if TYPE_CHECKING:
    import torch
    from langchain_core.language_models import BaseChatModel

_DTYPES = ("float32", "bfloat16", "float16")


def _stop_in_new_text(tokenizer: Any, prompt_len: int, stops: list[str]) -> Any:
    """A StoppingCriteria that ends a row once its *generated* text contains a stop string.

    transformers' own `stop_strings` also match across the end of the prompt: the chat template ends
    with a newline, so a reply starting "Question:" ended at once on the stop "\nQuestion:". vLLM only
    looks at generated text; so does this.
    """
    import torch
    from transformers import StoppingCriteria

    tail = max(len(s) for s in stops) + 4  # tokens: every token has at least one character, plus slack

    class StopInNewText(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[:, prompt_len:]
            texts = tokenizer.batch_decode(new[:, -tail:], skip_special_tokens=True)
            done = [any(stop in text for stop in stops) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopInNewText()


def _repeat_in_new_text(tokenizer: Any, prompt_len: int, stops: list[str]) -> Any:
    """A StoppingCriteria that ends a row once its generated text (up to any stop string) has repeated a
    sentence: everything after would be cut anyway (`cut_answer`), so it is not worth generating."""
    import torch
    from transformers import StoppingCriteria

    class RepeatInNewText(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            done = [repeats(cut_at_stop(text, stops)) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return RepeatInNewText()


def _no_repeat_ngram_in_answer(prompt_len: int, size: int) -> Any:
    """transformers' no-repeat-n-gram rule over the generated tokens only. Its own `no_repeat_ngram_size`
    also counts the prompt, which would keep the model from quoting any `size` tokens of a passage."""
    from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor

    rule = NoRepeatNGramLogitsProcessor(size)

    class NoRepeatNGramInAnswer(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            return rule(input_ids[:, prompt_len:], scores)

    return NoRepeatNGramInAnswer()


@dataclass(frozen=True)
class _KeptPrompts:
    """The attention keys and values of the last batch's prompts, left-padded to `length` tokens."""

    layers: list[tuple[Any, Any]]  # (keys, values) per layer: batch × heads × tokens × head size
    rows: dict[tuple[int, ...], tuple[int, int]]  # prompt ids -> (row, position of its first token)
    length: int

    def prefix(self, prompt: list[int]) -> Any:
        """A one-row cache of `prompt` without its last token (whose logits scoring needs), or None."""
        from transformers import DynamicCache

        found = self.rows.get(tuple(prompt))
        if found is None or len(prompt) < 2:
            return None
        row, start = found
        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.layers):
            window = (slice(row, row + 1), slice(None), slice(start, self.length - 1))
            cache.update(keys[window], values[window], index)
        return cache

    @classmethod
    def of(cls, cache: Any, batch: Any) -> _KeptPrompts | None:
        """What `generate` left in `cache` for the prompts in `batch`; None for caches other than plain
        full-attention ones (sliding windows and recurrent states cannot be cut back to the prompt)."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows: dict[tuple[int, ...], tuple[int, int]] = {}
        for row in range(ids.shape[0]):
            start = int((mask[row] == 0).sum())  # left padding
            rows[tuple(ids[row, start:].tolist())] = (row, start)
        return cls([(layer.keys, layer.values) for layer in layers], rows, int(ids.shape[1]))


class TransformersGenerator:
    """`Generator` backed by `AutoModelForCausalLM.generate`; one generation at a time per instance."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        adapter: str | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        self.spec = model or None
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self.model_id = model_name(model)
        # A LoRA adapter (peft folder) applied on top of the model; checked now, loaded with the model.
        self.adapter = read_adapter(adapter, kinds=(LORA, PROMPT_TUNING)) if adapter else None
        if self.adapter:
            self.model_id += f"+{self.adapter.name}"
        self.model_path: Path | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        # Held for a whole generation: seeds use the global torch RNG, and a loaded model is shared state.
        self._lock = threading.RLock()
        self._keeping = 0  # open keep_prompts() contexts
        self._kept: _KeptPrompts | None = None

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> TransformersGenerator:
        """Resolve (converting a GGUF if needed) and load tokenizer and model; later calls do nothing."""
        with self._lock:
            if self._model is not None:
                return self
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a weights bar on every ask is noise
            if self.threads:
                torch.set_num_threads(self.threads)  # process-wide: torch has no per-model thread count
            path = resolve_model(self.spec)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            tokenizer.padding_side = "left"  # batches must end where generation starts
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            dtype = getattr(torch, self.dtype)
            # A torch module: the adapter wraps the model in another one (transformers types them apart).
            model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
            if self.adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.adapter.path), is_trainable=False)
            model.to(self.device).eval()
            self.model_path, self._tokenizer, self._model = path, tokenizer, model
            return self

    @property
    def tokenizer(self) -> Any:
        return self.load()._tokenizer

    @property
    def model(self) -> Any:
        return self.load()._model

    def chat_model(self, sampling: GenerationConfig, context_window: int) -> BaseChatModel:
        """The text protocol of ragapp.react_chat: this model has no tool calls of its own."""
        from ragapp.react_chat import ReActChatModel

        return ReActChatModel(generator=self, sampling=sampling, context_window=context_window)

    def close(self) -> None:
        with self._lock:
            self._model = self._tokenizer = self._kept = None

    @contextmanager
    def keep_prompts(self) -> Iterator[None]:
        """Keep the last `generate`/`generate_batch` call's prompt state, so that `reference_nll` on one of its
        prompts reads only the text: an eval item then reads its prompt once, not twice (about 3 s of a
        900-token prompt on one core). Held for one call at a time; freed when the last context closes."""
        with self._lock:
            self._keeping += 1
        try:
            yield
        finally:
            with self._lock:
                self._keeping -= 1
                if not self._keeping:
                    self._kept = None

    @property
    def context_window(self) -> int:
        return int(self.model.config.max_position_embeddings)

    # -- prompts ---------------------------------------------------------------------------------
    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the chat-templated prompt including the assistant header the model continues from."""
        conversation = [dict(m) for m in messages]
        return len(self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False))

    def text_tokens(self, text: str) -> int:
        """Tokens of `text` alone, as it would follow a prompt (no BOS or other special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- scoring ---------------------------------------------------------------------------------
    def reference_nll(self, messages: Sequence[Message], text: str) -> tuple[float, int]:
        """Summed NLL (nats) of `text`'s tokens after the templated prompt, and how many were scored.

        Over-long input loses the start of the prompt, never the text; a text longer than the window is
        scored on its first tokens, after at least one prompt token (in plain-text mode, after its own first).
        One forward pass; only the logits at scored positions are materialized (the vocabulary is large). Inside
        `keep_prompts`, a prompt the last generation read is not read again.
        """
        import torch
        import torch.nn.functional as F

        window = self.context_window
        target: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        prompt: list[int] = []
        if messages:
            conversation = [dict(m) for m in messages]
            rendered = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
            prompt = list(rendered)
        whole = len(prompt)
        prompt, target = scoring_layout(prompt, target, window)
        if not target:
            return 0.0, 0
        with self._lock, torch.inference_mode():
            kept = self._kept.prefix(prompt) if self._kept is not None and len(prompt) == whole else None
            context = prompt[-1:] if kept is not None else prompt  # the kept cache holds the rest
            ids = torch.tensor([context + target], dtype=torch.long, device=self.device)
            # logits at the last context position .. end-1 predict the target tokens; the last one predicts nothing.
            out = self.model(
                input_ids=ids, past_key_values=kept, use_cache=kept is not None, logits_to_keep=len(target) + 1
            )
            logits = out.logits[0, :-1].float()
            nll = F.cross_entropy(logits, ids[0, len(context) :], reduction="sum")
        return float(nll), len(target)

    def _encode(self, conversations: Sequence[Sequence[Message]]) -> Any:
        batch = self.tokenizer.apply_chat_template(
            [[dict(m) for m in c] for c in conversations],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        return batch.to(self.device)

    # -- generation ------------------------------------------------------------------------------
    def _generate_ids(self, batch: Any, config: GenerationConfig, keep: bool = False, **extra: Any) -> torch.Tensor:
        """Run `model.generate` on an encoded batch; returns only the new tokens (batch × new).

        With `keep`, inside `keep_prompts`, the prompts' attention state is kept for `reference_nll`."""
        import torch

        prompt_len = int(batch["input_ids"].shape[1])
        room = self.context_window - prompt_len
        if room < 1:
            raise ValueError(
                f"prompt has {prompt_len} tokens; the context window of {self.model_id} is {self.context_window}"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": min(config.max_new_tokens, room),
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": not config.greedy,
            **extra,
        }
        if not config.greedy:
            kwargs.update(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
        if config.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = config.repetition_penalty
        if config.no_repeat_ngram_size:
            rule = _no_repeat_ngram_in_answer(prompt_len, config.no_repeat_ngram_size)
            kwargs["logits_processor"] = [*extra.get("logits_processor", []), rule]
        stops = [s for s in config.stop if s]
        # Each row ends as soon as a stop string or a repeated sentence is complete (text is cut in _decode).
        criteria = [*extra.get("stopping_criteria", []), _repeat_in_new_text(self.tokenizer, prompt_len, stops)]
        if stops:
            criteria.append(_stop_in_new_text(self.tokenizer, prompt_len, stops))
        kwargs["stopping_criteria"] = criteria
        seed = None if config.greedy else config.seed
        # fork_rng: a seeded call leaves the caller's global RNG state as it was.
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
                if self.device.startswith("cuda"):
                    torch.cuda.manual_seed_all(seed)
            # A soft prompt (prompt tuning) puts virtual tokens before the ids, so its cache rows do not line up.
            keep = keep and self._keeping > 0 and (self.adapter is None or self.adapter.kind == LORA)
            self._kept = None
            out = self.model.generate(**batch, **kwargs, return_dict_in_generate=keep)
            if keep:
                self._kept = _KeptPrompts.of(out.past_key_values, batch)
                out = out.sequences
        return out[:, prompt_len:]

    def _decode(self, ids: Any, config: GenerationConfig) -> str:
        return cut_answer(self.tokenizer.decode(ids, skip_special_tokens=True), config.stop)

    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str:
        return self._decode(self._generate_ids(self._encode([messages]), config, keep=True)[0], config)

    def generate_batch(self, conversations: Sequence[Sequence[Message]], config: GenerationConfig) -> list[str]:
        """All conversations in one left-padded `generate` call."""
        if not conversations:
            return []
        rows = self._generate_ids(self._encode(conversations), config, keep=True)
        return [self._decode(row, config) for row in rows]

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]:
        """Text pieces as they are generated; they join to exactly what `generate` returns.

        Generation runs in a worker thread feeding a `TextIteratorStreamer`. Its errors are re-raised
        here; closing the iterator early stops the worker at the next token, and the thread is always joined.
        """
        from transformers import StoppingCriteria, TextIteratorStreamer

        batch = self._encode([messages])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: list[BaseException] = []

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        def work() -> None:
            try:
                self._generate_ids(batch, config, streamer=streamer, stopping_criteria=[_Cancelled()])
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
                errors.append(exc)
                streamer.text_queue.put(streamer.stop_signal)  # unblock the consumer

        worker = threading.Thread(target=work, name="ragapp-generate", daemon=True)
        worker.start()
        filt = AnswerFilter(config.stop)
        try:
            for piece in streamer:
                out = filt.push(piece)
                if out:
                    yield out
                if filt.stopped:
                    break
            cancel.set()
            worker.join()
            if errors:
                raise errors[0]
            tail = filt.finish()
            if tail:
                yield tail
        finally:
            cancel.set()
            worker.join()
