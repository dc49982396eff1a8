"""LoRA adapter folders are checked before any engine loads: each problem gets its own sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragapp.generators.adapters import AdapterError, parse_named, read_adapter


def adapter_folder(tmp_path: Path, config: object, weights: bool = True) -> Path:
    folder = tmp_path / "my-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    return folder


def test_reads_a_peft_lora_folder(tmp_path: Path) -> None:
    folder = adapter_folder(tmp_path, {"peft_type": "LORA", "r": 12, "base_model_name_or_path": "/models/base"})
    adapter = read_adapter(folder)
    assert (adapter.name, adapter.rank, adapter.base_model) == ("my-adapter", 12, "/models/base")
    assert adapter.vllm_max_rank == 16  # rounded up to a rank vLLM accepts
    assert read_adapter(folder, "support").name == "support"


@pytest.mark.parametrize(
    ("config", "weights", "message"),
    [
        ({"peft_type": "PREFIX_TUNING", "r": 8}, True, "peft_type is 'PREFIX_TUNING'"),
        ({"peft_type": "LORA", "r": 0}, True, "rank r must be an integer"),
        ({"peft_type": "LORA", "r": 1024}, True, "rank r must be an integer from 1 to 512"),
        ({"peft_type": "LORA", "r": 8}, False, "no adapter_model.safetensors"),
        ("{not json", True, "not readable JSON"),
        ([1, 2], True, "not a LoRA adapter"),
    ],
)
def test_bad_adapter_folders(tmp_path: Path, config: object, weights: bool, message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        read_adapter(adapter_folder(tmp_path, config, weights))


def test_missing_file_and_plain_folder(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="LoRA adapter not found"):
        read_adapter(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterError, match="got a file"):
        read_adapter(tmp_path / "file")
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        read_adapter(tmp_path)


def test_parse_named() -> None:
    assert parse_named("support=/a/b") == ("support", "/a/b")
    assert parse_named("/a/colors")[0] == "colors"
    for bad in ("=/a/b", "name="):
        with pytest.raises(AdapterError, match="NAME=PATH"):
            parse_named(bad)
