"""A real LoRA adapter for tests: peft's own format, random but small weights (seeded), on the shipped model.

Random rather than trained: what the tests check is that every backend applies the same adapter the same
way, which needs an adapter that visibly changes greedy output, not a useful one.
"""

from __future__ import annotations

from pathlib import Path


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
