"""`ragapp align --method dpo`: real DPO on the shipped SmolLM2 with a small preference set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from tests.lora import shipped_generator

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown"]


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def preferences(tmp_path: Path) -> Path:
    """Prefer a direct answer to a refusal; rankings and plain pairs mixed, as people supply them."""
    rows: list[dict[str, object]] = []
    for i in range(24):
        prompt = f"What colour is item number {i}?"
        direct = f"Item {i} is {COLOURS[i % len(COLOURS)]}."
        refusal = "I'm sorry, I cannot help with questions about items."
        if i % 3 == 0:
            rows.append({"prompt": prompt, "completions": [direct, f"Maybe item {i} has a colour.", refusal]})
        else:
            rows.append({"prompt": prompt, "chosen": direct, "rejected": refusal})
    rows.append({"prompt": "What colour is the sky?", "completions": ["Blue."]})  # no comparison: noted
    return write(tmp_path / "prefs.jsonl", rows)


def test_bad_preference_files_are_refused_before_training(tmp_path: Path) -> None:
    runner = CliRunner()
    ws = str(tmp_path / "ws")
    single = write(tmp_path / "single.jsonl", [{"prompt": "p", "completions": ["only one"]}])
    result = runner.invoke(cli, ["-w", ws, "align", str(single), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no comparison at all" in result.output
    same = write(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "x"}])
    result = runner.invoke(cli, ["-w", ws, "align", str(same), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "same.jsonl:1:" in result.output and "same text" in result.output
    result = runner.invoke(cli, ["-w", ws, "align", str(same), "--beta", "0"])
    assert result.exit_code == 2 and "--beta" in result.output
    assert not (tmp_path / "o").exists() and "Traceback" not in result.output


@pytest.mark.slow
def test_dpo_prefers_the_chosen_answers_on_held_out_prompts(tmp_path: Path, preferences: Path) -> None:
    from ragapp.generators.transformers_local import TransformersGenerator

    out = tmp_path / "dpo"
    result = CliRunner().invoke(
        cli,
        ["-w", str(tmp_path / "ws"), "align", str(preferences), "--out", str(out), "--epochs", "1",
         "--lr", "5e-4", "--test", "0.2", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "dpo" and report["beta"] == 0.1
    # 16 plain pairs + 8 rankings of 3 (3 pairs each); split by prompt, so the counts are whole prompts' worth
    assert sum(report["pairs"].values()) == 16 + 8 * 3
    assert report["pairs"]["test"] >= 5
    assert any("prefs.jsonl:25: only one completion" in n for n in report["notes"])
    assert report["train_loss"][-1] < math.log(2)  # DPO starts at ln 2: policy == reference
    assert report["test"]["loss"] < math.log(2)
    assert report["test"]["reward_accuracy"] >= 0.8 and report["test"]["reward_margin"] > 0
    assert 0 < report["trainable_params"] < report["total_params"] / 100
    assert (out / "adapter_model.safetensors").is_file() and (out / "ragapp-align.json").is_file()
    held_out = [json.loads(line) for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    train_prompts = {json.loads(line)["prompt"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    assert held_out and not {p["prompt"] for p in held_out} & train_prompts

    # The adapter loads in the transformers backend and moves likelihood from rejected to chosen.
    base = shipped_generator()
    aligned = TransformersGenerator(adapter=str(out)).load()

    def margin(gen: TransformersGenerator, pair: dict[str, str]) -> float:
        prompt = [{"role": "user", "content": pair["prompt"]}]
        return gen.reference_nll(prompt, pair["rejected"])[0] - gen.reference_nll(prompt, pair["chosen"])[0]

    gains = [margin(aligned, p) - margin(base, p) for p in held_out]
    assert sum(g > 0 for g in gains) >= 0.8 * len(gains)
