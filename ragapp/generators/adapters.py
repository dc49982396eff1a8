"""LoRA adapters: folders written by peft (`adapter_config.json` + weights), checked before any engine loads.

Checking up front turns "vLLM worker crashed" or a peft traceback into one sentence naming the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ragapp.errors import GenerationError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# The ranks vLLM accepts for `max_lora_rank`; an adapter's rank is rounded up to one of them.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(GenerationError):
    """A LoRA adapter path that does not hold a usable adapter."""

    exit_code = 2


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int
    base_model: str  # as recorded by peft; informational (a local path or a hub name)

    @property
    def vllm_max_rank(self) -> int:
        return next(r for r in VLLM_RANKS if r >= self.rank)


def read_adapter(path: str | Path, name: str | None = None) -> Adapter:
    """The adapter in `path`, or an AdapterError saying what is wrong with it."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise AdapterError(f"LoRA adapter not found: {folder}")
    if not folder.is_dir():
        raise AdapterError(f"{folder} is not a LoRA adapter: expected a folder saved by peft, got a file")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(f"{folder} is not a LoRA adapter: it has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{config_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"{folder} is not a LoRA adapter (peft_type is {kind!r}); only LoRA is supported")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1 or rank > VLLM_RANKS[-1]:
        raise AdapterError(f"{config_path}: rank r must be an integer from 1 to {VLLM_RANKS[-1]}, got {rank!r}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise AdapterError(f"{folder} is not a LoRA adapter: no {' or '.join(WEIGHT_FILES)}")
    return Adapter(
        name or folder.resolve().name, folder.resolve(), rank, str(config.get("base_model_name_or_path") or "")
    )


def parse_named(spec: str) -> tuple[str, str]:
    """`NAME=PATH` → (NAME, PATH); a bare PATH is named after its folder."""
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).expanduser().resolve().name, spec
    if not name or not path:
        raise AdapterError(f"expected NAME=PATH for a LoRA adapter, got {spec!r}")
    return name, path
