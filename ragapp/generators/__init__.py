"""Generation backends behind one interface. Each backend is one module, imported only when chosen.

Loaded generators are cached per process: a model is loaded once however many Apps use it.
"""

from __future__ import annotations

import functools

from ragapp.generators.base import GenerationConfig, Generator, Message

__all__ = ["BACKENDS", "GenerationConfig", "Generator", "Message", "load_generator"]

BACKENDS = ("transformers", "vllm", "openai")


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
    if backend == "transformers":
        from ragapp.generators.transformers_local import TransformersGenerator

        return TransformersGenerator(model or None, device=device, dtype=dtype, adapter=adapter or None).load()
    if backend == "vllm":
        from ragapp.generators.vllm_local import VllmGenerator

        return VllmGenerator(model or None, dtype=dtype, context_window=context_window, adapter=adapter or None).load()
    if backend == "openai":
        from ragapp.generators.openai_client import DEFAULT_BASE_URL, OpenAIGenerator

        return OpenAIGenerator(
            base_url or DEFAULT_BASE_URL, model, api_key, timeout=timeout, context_window=context_window
        ).load()
    raise ValueError(f"unknown generation backend {backend!r} (available: {', '.join(BACKENDS)})")
