"""peft adapters: folders written by peft (`adapter_config.json` + weights), checked before any engine loads.

Both backends load LoRA; soft prompts (prompt tuning) only the transformers backend does, since vLLM
dropped prompt adapters.

Checking up front turns "vLLM worker crashed" or a peft traceback into one sentence naming the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ragapp.errors import GenerationError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
LORA = "LORA"
PROMPT_TUNING = "PROMPT_TUNING"
# The ranks vLLM accepts for `max_lora_rank`; an adapter's rank is rounded up to one of them.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(GenerationError):
    """An adapter path that does not hold an adapter the backend can use."""

    exit_code = 2


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int  # LoRA rank; 0 for a soft prompt
    base_model: str  # as recorded by peft; informational (a local path or a hub name)
    kind: str = LORA

    @property
    def vllm_max_rank(self) -> int:
        return next(r for r in VLLM_RANKS if r >= self.rank)


def read_adapter(path: str | Path, name: str | None = None, kinds: tuple[str, ...] = (LORA,)) -> Adapter:
    """The adapter in `path`, or an AdapterError saying what is wrong with it. `kinds`: the peft types accepted."""
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
    declared = config.get("peft_type") if isinstance(config, dict) else None
    kind = str(declared or "").upper()
    if kind not in kinds:
        hint = " (soft prompts load in the transformers backend only)" if kind == PROMPT_TUNING else ""
        accepted = " and ".join("LoRA" if k == LORA else "prompt tuning" for k in kinds)
        raise AdapterError(
            f"{folder} is not a LoRA adapter (peft_type is {declared!r}); {accepted} adapters are supported here{hint}"
        )
    rank = config.get("r", 0) if kind == LORA else 0
    if kind == LORA and (not isinstance(rank, int) or rank < 1 or rank > VLLM_RANKS[-1]):
        raise AdapterError(f"{config_path}: rank r must be an integer from 1 to {VLLM_RANKS[-1]}, got {rank!r}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise AdapterError(f"{folder} is not a LoRA adapter: no {' or '.join(WEIGHT_FILES)}")
    return Adapter(
        name or folder.resolve().name, folder.resolve(), rank, str(config.get("base_model_name_or_path") or ""), kind
    )


def parse_named(spec: str) -> tuple[str, str]:
    """`NAME=PATH` → (NAME, PATH); a bare PATH is named after its folder."""
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).expanduser().resolve().name, spec
    if not name or not path:
        raise AdapterError(f"expected NAME=PATH for a LoRA adapter, got {spec!r}")
    return name, path
