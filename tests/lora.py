"""Models for tests: a real LoRA adapter, and the shipped generator loaded once per test process.

The adapter is random rather than trained: what the tests check is that every backend applies the same
adapter the same way, which needs an adapter that visibly changes greedy output, not a useful one.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragapp.generators.transformers_local import TransformersGenerator


def make_adapter(base: Path, out: Path, seed: int = 0, rank: int = 8, std: float = 0.08) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    peft_model.save_pretrained(out)
    return out


@functools.cache
def shipped_generator() -> TransformersGenerator:
    """The shipped SmolLM2, untuned, in the transformers backend: the baseline a trained model is compared
    with. Loaded once per process and shared by every test module (they only read it)."""
    from ragapp.generators.transformers_local import TransformersGenerator

    return TransformersGenerator().load()
