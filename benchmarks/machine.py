"""The CPU a benchmark ran on, as its figures must name it: the model and what it computes bfloat16 with."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """e.g. "AMD EPYC, 2 CPUs, AVX-512 BF16, no AMX": the kinds of machine here differ in exactly that."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    bf16 = "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2 only"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{model}, {os.cpu_count()} CPUs, {bf16}, {amx}"
