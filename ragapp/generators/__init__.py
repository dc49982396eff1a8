"""Generation backends behind one interface. Each backend is one module, imported only when chosen.

`REGISTRY` is the one list of backend names (config validation and the CLI's choices read it): each
maps to a factory that builds the backend's generator from the `[generation]` settings. Loaded
generators are cached per process: a model is loaded once however many Apps use it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragapp.generators.base import GenerationConfig, Generator, Message
from ragapp.locks import MODEL_LOADING

if TYPE_CHECKING:
    from ragapp.config import GenerationSettings

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "Backend",
    "GenerationConfig",
    "Generator",
    "Message",
    "backend",
    "clear_cache",
    "close_loaded",
    "load_generator",
]


@dataclass(frozen=True)
class Backend:
    """One generation backend: how to build its generator, and what the agent may expect of it."""

    build: Callable[[GenerationSettings], Generator]  # the generator, not loaded yet; imports the backend
    native_tools: bool  # its `chat_model` calls tools itself; known before loading, so bad requests fail fast


def _transformers(settings: GenerationSettings) -> Generator:
    from ragapp.generators.transformers_local import TransformersGenerator

    s = settings
    return TransformersGenerator(s.model or None, device=s.device, dtype=s.dtype, adapter=s.adapter or None)


def _vllm(settings: GenerationSettings) -> Generator:
    from ragapp.generators.vllm_local import VllmGenerator

    s = settings
    return VllmGenerator(s.model or None, dtype=s.dtype, context_window=s.context_window, adapter=s.adapter or None)


def _openai(settings: GenerationSettings) -> Generator:
    from ragapp.generators.openai_client import DEFAULT_BASE_URL, OpenAIGenerator

    s = settings
    return OpenAIGenerator(
        s.base_url or DEFAULT_BASE_URL, s.model, s.api_key, timeout=s.timeout, context_window=s.context_window
    )


REGISTRY: dict[str, Backend] = {
    "transformers": Backend(_transformers, native_tools=False),
    "vllm": Backend(_vllm, native_tools=False),
    "openai": Backend(_openai, native_tools=True),  # a server with tool calls (OpenAI; vLLM with a parser)
}
BACKENDS = tuple(REGISTRY)  # the names, for choices (`--backend`)

CACHED = 2  # loaded generators kept: an App's and one other (a comparison, a fine-tuned model)
_cache: dict[tuple[object, ...], Generator] = {}  # oldest first
_loaded: weakref.WeakSet[Generator] = weakref.WeakSet()  # evicted from the cache and unused: gone


def backend(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown generation backend {name!r} (available: {', '.join(REGISTRY)})") from None


def load_key(settings: GenerationSettings) -> tuple[object, ...]:
    """What identifies a loaded generator: every setting but the sampling ones (a new temperature reuses it)."""
    fields = [name for name in type(settings).model_fields if name not in GenerationConfig.model_fields]
    return tuple((name, getattr(settings, name)) for name in fields)


def load_generator(settings: GenerationSettings) -> Generator:
    """The loaded generator for `settings` (`[generation]`), from the cache when these settings loaded one."""
    key = load_key(settings)
    with MODEL_LOADING:  # see ragapp.locks; a second caller with the same settings waits, then finds it cached
        generator = _cache.pop(key, None)
        if generator is None:
            generator = backend(settings.backend).build(settings).load()
            _loaded.add(generator)
        _cache[key] = generator  # now the newest
        while len(_cache) > CACHED:
            del _cache[next(iter(_cache))]
        return generator


def clear_cache() -> None:
    """Forget the cached generators (the next load builds anew); those still in use stay open."""
    with MODEL_LOADING:
        _cache.clear()


def close_loaded() -> None:
    """Close every generator this process loaded, for a process that is done with them.

    A server stopped by a signal may end without running atexit handlers, and vLLM's engine processes
    would outlive it.
    """
    clear_cache()
    for generator in list(_loaded):
        generator.close()
    _loaded.clear()
