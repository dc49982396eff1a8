"""Scoring with a pairwise reward model: what `ragapp ask --best-of N` and the `reward` eval metric need.

A reward model is an encoder with a one-number head, trained (`ragapp.reward_training`) so that a
preferred completion of a prompt scores above a rejected one. A score means nothing on its own, but it
ranks answers to the same prompt. This module loads and scores only: answering never imports training.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragapp.errors import UsageError

REPORT_FILE = "ragapp-reward.json"  # written by training; its presence marks a reward model folder


def load_classifier(path: Path) -> tuple[Any, Any]:
    """Tokenizer and one-output sequence classifier from a local folder (the head is new for a base encoder)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a model folder (no config.json)")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is the point here, not a warning
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: cannot load it as a reward model ({exc})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:  # decoder-only bases
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def rewards(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int) -> Any:
    """One score per (prompt, completion), encoded as a text pair; gradients flow if the caller allows them."""
    batch = tokenizer(
        list(prompts), list(completions), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    return model(**batch).logits.squeeze(-1)


class RewardModel:
    """A trained reward model folder, loaded for scoring (eval mode, no gradients)."""

    def __init__(self, path: Path, model: Any, tokenizer: Any, info: dict[str, Any]):
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_length = int(info.get("max_length", 256))

    @property
    def model_id(self) -> str:
        return str(self.path)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise UsageError(f"reward model not found: {folder}")
        if not (folder / REPORT_FILE).is_file():
            raise UsageError(
                f"{folder} is not a ragapp reward model (no {REPORT_FILE}); train one with `ragapp reward train`"
            )
        try:
            info = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{folder / REPORT_FILE}: unreadable ({exc})") from None
        if not isinstance(info, dict):
            raise UsageError(f"{folder / REPORT_FILE}: expected a JSON object")
        tokenizer, model = load_classifier(folder)
        model.eval()
        return cls(folder.resolve(), model, tokenizer, info)

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 32) -> list[float]:
        """How good each completion is as an answer to its prompt; comparable across completions of a prompt."""
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        # similar lengths together: less padding
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
        scores = [0.0] * len(order)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                r = rewards(
                    self.model,
                    self.tokenizer,
                    [prompts[i] for i in idx],
                    [completions[i] for i in idx],
                    self.max_length,
                )
                for i, value in zip(idx, r.tolist(), strict=True):
                    scores[i] = float(value)
        return scores

    def score_one(self, prompt: str, completion: str) -> float:
        return self.score([prompt], [completion])[0]


@functools.lru_cache(maxsize=2)
def load_reward_model(path: str) -> RewardModel:
    """One loaded reward model per folder per process, shared by every App."""
    return RewardModel.load(path)
