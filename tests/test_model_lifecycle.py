"""The model lifecycle end to end, as the docs describe it: ingest ragapp's documentation, LoRA
fine-tune the shipped SmolLM2 on question/answer pairs about it (prompted with retrieved passages,
as `ask` prompts), and evaluate the held-out questions before and after with the adapter.

Serving what `ragapp finetune` saves (`ragapp model serve --lora`, answers equal to the transformers
backend's with the adapter) is checked by test_model_serve, whose shared vLLM server serves such an
adapter: a server of its own here cost a minute more. Real models and real training; about three
minutes on one CPU core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from tests.support import IngestedDocs

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "docs_sft.jsonl"
# Short prompts and answers keep training and evaluation to minutes on a CPU: one passage, cut to fit a
# 256-token window (prompt and answer), took a third off the training time of the full passage.
SETTINGS = "[retrieval]\nk = 1\n\n[generation]\nmax_new_tokens = 48\ncontext_window = 256\n"


def invoke(ws: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args], env=env)
    assert result.exit_code == 0, f"ragapp {' '.join(args)}:\n{result.output}"
    return result.stdout


def test_finetune_then_evaluate_before_and_after(tmp_path: Path, ingested_docs: IngestedDocs) -> None:
    ws = ingested_docs.folder  # a copy of the session's ingested docs/ (the settings below do not change ingest)
    (ws / "ragapp.toml").write_text(SETTINGS, encoding="utf-8")
    adapter = tmp_path / "docs-lora"

    report = json.loads(
        invoke(
            ws,
            "finetune",
            str(DATA),
            "--test",
            "0.25",
            "--epochs",
            "1",
            "--lr",
            "1e-3",
            "--out",
            str(adapter),
            "--json",
        )
    )
    assert report["examples"]["test"] == 10 and report["examples"]["train"] >= 25
    assert report["validation_loss"][-1] < report["validation_loss"][0]
    assert report["test_loss_after"] < report["test_loss_before"]
    held_out = adapter / "data" / "test.jsonl"
    train_questions = {json.loads(line)["question"] for line in (adapter / "data" / "train.jsonl").open()}
    assert not {json.loads(line)["question"] for line in held_out.open()} & train_questions

    with_adapter = {"RAGAPP_GENERATION_ADAPTER": str(adapter)}
    before = json.loads(invoke(ws, "eval", "run", str(held_out), "--name", "before", "--json"))
    after = json.loads(invoke(ws, "eval", "run", str(held_out), "--name", "after", "--json", env=with_adapter))
    assert after["models"]["generator"] == "SmolLM2-135M-Instruct+docs-lora"
    compared = json.loads(invoke(ws, "eval", "compare", "before", "after", "--json"))
    rouge_l = next(m for m in compared["metrics"] if m["name"] == "rougeL")
    assert compared["paired"] == 10
    # The answers took on the references' style: ROUGE-L against them rises.
    assert rouge_l["delta"] > 0.02, (before["aggregates"]["rougeL"], after["aggregates"]["rougeL"])
    assert after["aggregates"]["perplexity"] < before["aggregates"]["perplexity"]
