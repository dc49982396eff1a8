"""Generation backends behind one interface. Each backend is one module, imported only when chosen.

Loaded generators are cached per process: a model is loaded once however many Apps use it.
"""

from __future__ import annotations

import functools

from ragapp.generators.base import GenerationConfig, Generator, Message

__all__ = ["GenerationConfig", "Generator", "Message", "load_generator"]

BACKENDS = ("transformers",)


@functools.lru_cache(maxsize=2)
def load_generator(backend: str, model: str = "", device: str = "cpu") -> Generator:
    if backend == "transformers":
        from ragapp.generators.transformers_local import TransformersGenerator

        return TransformersGenerator(model or None, device=device).load()
    raise ValueError(f"unknown generation backend {backend!r} (available: {', '.join(BACKENDS)})")
