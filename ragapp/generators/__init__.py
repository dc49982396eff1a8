"""Generation backends behind one interface. Each backend is one module, imported only when chosen.

Loaded generators are cached per process: a model is loaded once however many Apps use it.
"""

from __future__ import annotations

import functools
import weakref

from ragapp.generators.base import GenerationConfig, Generator, Message
from ragapp.locks import MODEL_LOADING

__all__ = ["BACKENDS", "GenerationConfig", "Generator", "Message", "close_loaded", "load_generator"]

BACKENDS = ("transformers", "vllm", "openai")
_loaded: weakref.WeakSet[Generator] = weakref.WeakSet()  # evicted from the cache and unused: gone


@functools.lru_cache(maxsize=2)
def load_generator(
    backend: str,
    model: str = "",
    device: str = "cpu",
    dtype: str = "float32",
    adapter: str = "",
    context_window: int = 2048,
    base_url: str = "",
    api_key: str = "",
    timeout: float = 120.0,
) -> Generator:
    """A loaded generator. `model` is a local model (GGUF or folder) except for `openai`: a served model name."""
    with MODEL_LOADING:  # see ragapp.locks
        generator: Generator
        if backend == "transformers":
            from ragapp.generators.transformers_local import TransformersGenerator

            generator = TransformersGenerator(model or None, device=device, dtype=dtype, adapter=adapter or None)
        elif backend == "vllm":
            from ragapp.generators.vllm_local import VllmGenerator

            generator = VllmGenerator(
                model or None, dtype=dtype, context_window=context_window, adapter=adapter or None
            )
        elif backend == "openai":
            from ragapp.generators.openai_client import DEFAULT_BASE_URL, OpenAIGenerator

            generator = OpenAIGenerator(
                base_url or DEFAULT_BASE_URL, model, api_key, timeout=timeout, context_window=context_window
            )
        else:
            raise ValueError(f"unknown generation backend {backend!r} (available: {', '.join(BACKENDS)})")
        generator = generator.load()  # type: ignore[attr-defined]
        _loaded.add(generator)
        return generator


def close_loaded() -> None:
    """Close every generator this process loaded, for a process that is done with them.

    A server stopped by a signal may end without running atexit handlers, and vLLM's engine processes
    would outlive it.
    """
    load_generator.cache_clear()
    for generator in list(_loaded):
        generator.close()
    _loaded.clear()
