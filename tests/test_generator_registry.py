"""The generation backend registry: names listed once, factories given the settings, one load per model.

The backend registered here is a FAKE (a factory that records its calls and a generator that only counts
loads), for the registry's control flow; the real backends have their own test files.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from ragapp import generators
from ragapp.config import GenerationSettings
from ragapp.errors import ConfigError
from ragapp.generators import REGISTRY, Backend, backend, clear_cache, load_generator


class CountingGenerator:
    """FAKE generator: only what the registry touches (load, close)."""

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self.loads = 0
        self.closed = False

    def load(self) -> CountingGenerator:
        self.loads += 1
        return self

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[GenerationSettings]]:
    """Registers the FAKE backend "counting"; yields the settings each factory call received. The cache
    is emptied for the test and given back afterwards, so generators other tests loaded stay loaded."""
    built: list[GenerationSettings] = []

    def factory(settings: GenerationSettings) -> Any:
        built.append(settings)
        return CountingGenerator(settings)

    monkeypatch.setitem(REGISTRY, "counting", Backend(factory, native_tools=False))
    monkeypatch.setattr(generators, "_loaded", weakref.WeakSet())  # close_loaded here closes only these
    kept = dict(generators._cache)
    clear_cache()
    yield built
    clear_cache()
    generators._cache.update(kept)


def test_an_unknown_backend_is_refused_naming_every_registered_one() -> None:
    with pytest.raises(ValueError, match="unknown generation backend 'llamacpp'") as error:
        backend("llamacpp")
    assert all(name in str(error.value) for name in REGISTRY)
    with pytest.raises(ValueError) as invalid:
        GenerationSettings(backend="llamacpp")
    assert all(repr(name) in str(invalid.value) for name in REGISTRY)


def test_config_validation_reads_the_registry(fake_backend: list[GenerationSettings]) -> None:
    assert GenerationSettings(backend="counting").backend == "counting"  # registered just now, so valid
    assert generators.BACKENDS == tuple(name for name in REGISTRY if name != "counting")


def test_a_config_file_naming_an_unknown_backend_fails_with_the_names(tmp_path: Any) -> None:
    from ragapp.config import load_config

    (tmp_path / "ragapp.toml").write_text("[generation]\nbackend = 'llamacpp'\n")
    with pytest.raises(ConfigError, match="generation.backend: Input should be 'transformers', 'vllm' or 'openai'"):
        load_config(tmp_path)


def test_the_factory_receives_the_generation_settings(fake_backend: list[GenerationSettings]) -> None:
    settings = GenerationSettings(backend="counting", model="some-model", dtype="bfloat16", context_window=4096)
    generator = load_generator(settings)
    assert fake_backend == [settings]
    assert isinstance(generator, CountingGenerator) and generator.loads == 1


def test_the_same_settings_load_once_and_sampling_does_not_count(fake_backend: list[GenerationSettings]) -> None:
    first = load_generator(GenerationSettings(backend="counting", model="a"))
    again = load_generator(GenerationSettings(backend="counting", model="a", temperature=0.7, max_new_tokens=9))
    other = load_generator(GenerationSettings(backend="counting", model="b"))
    assert again is first and other is not first
    assert len(fake_backend) == 2 and isinstance(first, CountingGenerator) and first.loads == 1


def test_the_cache_keeps_the_latest_generators_and_close_loaded_closes_them(
    fake_backend: list[GenerationSettings],
) -> None:
    a, b = (load_generator(GenerationSettings(backend="counting", model=m)) for m in "ab")
    assert load_generator(GenerationSettings(backend="counting", model="a")) is a  # a is now the newest
    load_generator(GenerationSettings(backend="counting", model="c"))  # evicts b, the oldest
    assert load_generator(GenerationSettings(backend="counting", model="a")) is a
    assert load_generator(GenerationSettings(backend="counting", model="b")) is not b
    assert len(fake_backend) == 4
    generators.close_loaded()
    assert isinstance(a, CountingGenerator) and a.closed
    assert load_generator(GenerationSettings(backend="counting", model="a")) is not a
