"""`ragapp reward`: rankings read into pairs, the split by prompt, and real Bradley–Terry training of the shipped
MiniLM on preferences built from ragapp's own documentation, saved, loaded back and scored."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from ragapp.errors import UsageError
from ragapp.preferences import read_rankings, split_pairs
from ragapp.reward import REPORT_FILE, RewardModel, load_reward_model
from ragapp.reward_training import RewardReport, train_reward
from ragapp.training_data import TrainingDataError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["reward", *args])


# -- reading --------------------------------------------------------------------------------------


def test_a_ranking_becomes_every_preferred_first_pair(tmp_path: Path) -> None:
    data = write(tmp_path / "r.jsonl", [{"prompt": "P", "completions": ["a", "b", "c", "d"]}])
    rankings = read_rankings(data)
    assert [(p.chosen, p.rejected) for p in rankings.pairs] == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"),
    ]  # fmt: skip
    assert {p.prompt for p in rankings.pairs} == {"P"} and {p.line for p in rankings.pairs} == {1}
    assert rankings.notes == [] and rankings.prompts == ["P"]


def test_ranks_order_completions_and_ties_give_no_pair(tmp_path: Path) -> None:
    data = write(
        tmp_path / "r.jsonl",
        [
            {"prompt": "P", "chosen": "good", "rejected": "bad"},
            {"prompt": "Q", "completions": [{"text": "worst", "rank": 3}, {"text": "x", "rank": 2},
                                            {"text": "best", "rank": 1}, {"text": "y", "rank": 2}]},
        ],
    )  # fmt: skip
    rankings = read_rankings(data)
    assert [(p.prompt, p.chosen, p.rejected, p.line) for p in rankings.pairs] == [
        ("P", "good", "bad", 1),
        ("Q", "best", "x", 2), ("Q", "best", "y", 2), ("Q", "best", "worst", 2),
        ("Q", "x", "worst", 2), ("Q", "y", "worst", 2),
    ]  # fmt: skip
    assert rankings.notes == [f"{data}: 1 tied pair (line 2) give no comparison"]


def test_lines_without_a_comparison_are_noted_and_skipped(tmp_path: Path) -> None:
    data = write(
        tmp_path / "r.jsonl",
        [
            {"prompt": "P", "completions": ["a", "b"]},
            {"prompt": "Q", "completions": ["only"]},
            "",
            {"prompt": "R", "completions": [{"text": "x", "rank": 1}, {"text": "y", "rank": 1}]},
        ],
    )
    rankings = read_rankings(data)
    assert len(rankings.pairs) == 1 and rankings.prompts == ["P"]
    assert rankings.notes == [
        f"{data}:2: only one completion, no comparison",
        f"{data}:4: all completions tied, no comparison",
    ]


def test_a_file_without_any_comparison_is_refused(tmp_path: Path) -> None:
    data = write(
        tmp_path / "r.jsonl",
        [
            {"prompt": "Q", "completions": ["only"]},
            {"prompt": "R", "completions": [{"text": t, "rank": 1} for t in "xy"]},
        ],
    )
    with pytest.raises(TrainingDataError, match="no comparison at all"):
        read_rankings(data)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match="empty"):
        read_rankings(empty)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"completions": ["a", "b"]}, "missing `prompt`"),
        ({"prompt": "  ", "completions": ["a", "b"]}, "`prompt` is empty"),
        ({"prompt": "P", "completions": "a, b"}, "`completions` must be a list"),
        ({"prompt": "P", "completions": []}, "`completions` is empty"),
        ({"prompt": "P", "completions": ["a", 2]}, "completion 2 must be a string like completion 1, not int"),
        ({"prompt": "P", "completions": [{"text": "a", "rank": 1}, "b"]}, "completion 2 must be {text, rank} like"),
        ({"prompt": "P", "completions": [1, 2]}, "completion 1 must be a string or {text, rank}, not int"),
        ({"prompt": "P", "completions": ["a", ""]}, "completion 2 is empty"),
        ({"prompt": "P", "completions": ["a", "a"]}, "completion 2 repeats completion 1"),
        ({"prompt": "P", "completions": [{"text": "a", "rank": "1"}, {"text": "b", "rank": 2}]}, "needs `rank`"),
        ({"prompt": "P", "completions": [{"text": "a", "rank": 1}, {"rank": 2}]}, "completion 2 needs `text`"),
        ({"prompt": "P", "chosen": "x", "rejected": "x"}, "the same text"),
        ({"prompt": "P", "chosen": "x"}, "missing `rejected`"),
        ({"prompt": "P", "completion": "x"}, "unknown shape"),
        ({"prompt": "P", "completions": ["a", "b"], "chosen": "a", "rejected": "b"}, "not both"),
    ],
)
def test_malformed_lines_are_errors_naming_file_and_line(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    data = write(tmp_path / "r.jsonl", [{"prompt": "ok", "completions": ["a", "b"]}, row])
    with pytest.raises(TrainingDataError, match=re.escape(f"{data}:2: ") + ".*" + re.escape(message)):
        read_rankings(data)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    data = write(tmp_path / "r.jsonl", [{"prompt": "ok", "completions": ["a", "b"]}, "", '{"prompt": "P", '])
    with pytest.raises(TrainingDataError, match=re.escape(f"{data}:3: not valid JSON")):
        read_rankings(data)


def test_the_split_is_by_prompt(tmp_path: Path) -> None:
    rows = []
    for i in range(40):  # 6 pairs per prompt, and each prompt on two lines
        rows.append({"prompt": f"prompt {i}", "completions": ["a", "b", "c"]})
        rows.append({"prompt": f"prompt {i}", "completions": [{"text": "d", "rank": 1}, {"text": "e", "rank": 2},
                                                              {"text": "f", "rank": 3}]})  # fmt: skip
    rankings = read_rankings(write(tmp_path / "r.jsonl", rows))
    parts = split_pairs(rankings, validation=0.2, test=0.2, seed=3)
    prompts = {name: {p.prompt for p in pairs} for name, pairs in parts.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"] and not prompts["validation"] & prompts["test"]
    assert {name: len(p) for name, p in prompts.items()} == {"train": 24, "validation": 8, "test": 8}
    assert all(len(pairs) == 6 * len(prompts[name]) for name, pairs in parts.items())  # no prompt cut in two
    assert split_pairs(rankings, 0.2, 0.2, seed=3) == parts
    assert split_pairs(rankings, 0.2, 0.2, seed=4) != parts


def test_bad_paths_are_refused_before_training(tmp_path: Path) -> None:
    data = write(tmp_path / "r.jsonl", [{"prompt": "P", "completions": ["a", "b"]}])
    with pytest.raises(UsageError, match=re.escape(f"base model not found: {tmp_path / 'nowhere'}")):
        train_reward(data, tmp_path / "out", base=str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path} is not a model folder")):
        train_reward(data, tmp_path / "out", base=str(tmp_path))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UsageError, match="already exists and is not empty"):
        train_reward(data, occupied)
    result = run("train", str(data), "--out", str(occupied))
    assert result.exit_code == 2 and "--overwrite" in result.output and "Traceback" not in result.output
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"] and (occupied / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()


def test_only_reward_model_folders_load(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(f"reward model not found: {tmp_path / 'none'}")):
        RewardModel.load(tmp_path / "none")
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path} is not a ragapp reward model")):
        RewardModel.load(tmp_path)
    pairs = write(tmp_path / "in.jsonl", [{"prompt": "P", "completion": "C"}])
    result = run("score", str(tmp_path), str(pairs))
    assert result.exit_code == 2 and "is not a ragapp reward model" in result.output
    assert "Traceback" not in result.output
    bad = write(tmp_path / "bad.jsonl", [{"question": "Q", "prediction": "A"}, {"prompt": "P"}])
    result = run("score", str(tmp_path), str(bad))
    assert result.exit_code == 2 and f"{bad}:2: missing `completion`" in result.output


# -- real training --------------------------------------------------------------------------------


def doc_sections(chars: int = 150) -> list[tuple[str, str]]:
    """(heading, the first `chars` characters of its text) of every documentation section long enough.

    A heading used by several pages ("From Python") counts once: each prompt must be distinct.
    """
    sections: list[tuple[str, str]] = []
    seen: set[str] = set()
    for md in sorted(DOCS.glob("*.md")):
        parts = re.split(r"^#{2,3} +(.+)$", md.read_text(encoding="utf-8"), flags=re.MULTILINE)
        for heading, body in zip(parts[1::2], parts[2::2], strict=True):
            lines = [line for line in body.splitlines() if line.strip() and not line.startswith("```")]
            text = re.sub(r"\s+", " ", " ".join(lines)).strip()
            if len(text) >= chars and heading.strip() not in seen:
                seen.add(heading.strip())
                sections.append((heading.strip(), text[:chars].rsplit(" ", 1)[0]))
    return sections


def preferences(path: Path, n: int) -> Path:
    """Prefer a section's own text to the same words shuffled: for a heading, the answer that reads as prose.

    The three input shapes are mixed, as people supply them.
    """
    sections = doc_sections()
    if len(sections) < n:
        pytest.skip(f"{DOCS} has only {len(sections)} sections long enough, {n} needed")
    rng = random.Random(0)
    rng.shuffle(sections)
    rows: list[dict[str, Any]] = []
    for i, (heading, text) in enumerate(sections[:n]):
        words = text.split()
        rng.shuffle(words)
        shuffled = " ".join(words)
        if i % 3 == 0:
            rows.append({"prompt": heading, "completions": [text, shuffled]})
        elif i % 3 == 1:
            rows.append({"prompt": heading, "completions": [{"text": shuffled, "rank": 2}, {"text": text, "rank": 1}]})
        else:
            rows.append({"prompt": heading, "chosen": text, "rejected": shuffled})
    rows.append({"prompt": "A heading with one answer", "completions": ["Only this one."]})
    return write(path, rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RewardReport, Path, Path]:
    """One real training run shared by the tests below: 120 prompts of one pair each, 2 epochs."""
    folder = tmp_path_factory.mktemp("reward")
    data = preferences(folder / "docs-prefs.jsonl", 120)
    out = folder / "model"
    report = train_reward(data, out, epochs=2, lr=2e-4, batch_size=4, max_length=128, validation=0.1, test=0.2)
    return report, data, out


@pytest.mark.slow
def test_training_learns_the_preference_on_held_out_prompts(trained: tuple[RewardReport, Path, Path]) -> None:
    report, data, _ = trained
    assert report.pairs == {"train": 84, "validation": 12, "test": 24}  # one pair per prompt; 120 prompts
    assert report.prompts == report.pairs
    assert report.notes == [f"{data}:121: only one completion, no comparison"]
    assert len(report.train_loss) == len(report.validation_loss) == len(report.validation_accuracy) == 2
    assert report.train_loss[-1] < report.train_loss[0] and report.train_loss[-1] < math.log(2)
    assert report.test_accuracy_before is not None and report.test_accuracy_after is not None
    assert report.test_accuracy_after >= 0.8 and report.test_accuracy_after > report.test_accuracy_before
    assert report.test_loss_after is not None and report.test_loss_after < math.log(2)
    assert report.steps == 2 * 21 and 0 < report.seconds_per_step < report.seconds


@pytest.mark.slow
def test_the_saved_model_loads_and_ranks_held_out_answers(trained: tuple[RewardReport, Path, Path]) -> None:
    report, _, out = trained
    names = {p.name for p in out.rglob("*")}
    assert {"model.safetensors", "config.json", "tokenizer.json", REPORT_FILE} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pickle", ".pt", ".pth"))]
    assert not list(out.parent.glob(".model.partial-*"))
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777
    saved = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert saved["pairs"] == report.pairs and saved["max_length"] == 128 and saved["created"]
    assert saved["test_accuracy_after"] == report.test_accuracy_after

    held_out = [json.loads(line) for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    train_prompts = {json.loads(line)["prompt"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    assert len(held_out) == 24 and not {p["prompt"] for p in held_out} & train_prompts
    model = RewardModel.load(out)
    chosen = model.score([p["prompt"] for p in held_out], [p["chosen"] for p in held_out], batch_size=5)
    rejected = model.score([p["prompt"] for p in held_out], [p["rejected"] for p in held_out])
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    assert wins / len(held_out) == pytest.approx(report.test_accuracy_after)  # the same model, the same pairs
    assert wins >= 0.8 * len(held_out)
    assert model.score_one(held_out[0]["prompt"], held_out[0]["chosen"]) == pytest.approx(chosen[0], abs=1e-4)
    assert model.score([], []) == []


@pytest.mark.slow
def test_cli_trains_and_scores(tmp_path: Path, trained: tuple[RewardReport, Path, Path]) -> None:
    data = preferences(tmp_path / "small.jsonl", 20)
    out = tmp_path / "cli-model"
    result = run(
        "train", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--max-length", "64",
        "--test", "0.2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs"] == {"train": 14, "validation": 2, "test": 4} and report["epochs"] == 1
    assert report["steps"] == 2 and report["seconds_per_step"] > 0 and report["out"] == str(out)
    assert report["max_length"] == 64 and len(report["train_loss"]) == 1
    assert 0 <= report["test_accuracy_before"] <= 1 and 0 <= report["test_accuracy_after"] <= 1
    assert "small.jsonl:21: only one completion, no comparison" in result.stderr
    assert (out / REPORT_FILE).is_file()

    # Eval-style lines score too; the well-trained model puts a held-out answer above its shuffled words.
    _, _, model_dir = trained
    pair = json.loads((model_dir / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    heading = pair["prompt"]
    lines = write(
        tmp_path / "answers.jsonl",
        [{"question": heading, "prediction": pair["chosen"]}, {"prompt": heading, "completion": pair["rejected"]}],
    )
    result = run("score", str(model_dir), str(lines))
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(row[1].startswith(heading[:20]) for row in rows)
    assert float(rows[0][0]) > float(rows[1][0])
    result = run("score", str(out), str(lines), "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert [s["line"] for s in scored] == [1, 2] and all(isinstance(s["score"], float) for s in scored)

    result = run("train", str(data), "--out", str(out))  # not again without --overwrite
    assert result.exit_code == 2 and "already exists" in result.output
    assert json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))["created"] == report["created"]


@pytest.mark.slow
def test_a_configured_reward_model_scores_eval_runs(tmp_path: Path, trained: tuple[RewardReport, Path, Path]) -> None:
    """reward.model adds a `reward` metric to `eval score` runs, and `reward score` scores a stored run."""
    _, _, model_dir = trained
    pairs = [json.loads(line) for line in (model_dir / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [{"question": p["prompt"], "answer": p["chosen"], "prediction": p["chosen"]} for p in pairs[:3]]
    rows += [{"question": p["prompt"], "answer": p["chosen"], "prediction": p["rejected"]} for p in pairs[:3]]
    data = write(tmp_path / "predictions.jsonl", rows)
    ws = tmp_path / "ws"
    env = {"RAGAPP_REWARD_MODEL": str(model_dir)}
    result = CliRunner().invoke(
        cli, ["-w", str(ws), "eval", "score", str(data), "--name", "answers", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    run_result = json.loads(result.stdout)
    rewards = [item["metrics"]["reward"] for item in run_result["items"]]
    assert len(rewards) == 6 and all(good > bad for good, bad in zip(rewards[:3], rewards[3:], strict=True))
    assert run_result["aggregates"]["reward"] == pytest.approx(sum(rewards) / 6)
    assert run_result["models"] == {"reward": str(model_dir.resolve())}

    result = CliRunner().invoke(cli, ["-w", str(ws), "reward", "score", str(model_dir), "answers", "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert [s["line"] for s in scored] == [1, 2, 3, 4, 5, 6]
    assert [s["score"] for s in scored] == pytest.approx(rewards, abs=1e-5)
    result = CliRunner().invoke(cli, ["-w", str(ws), "reward", "score", str(model_dir), "no-such-run"])
    assert result.exit_code == 2 and "no evaluation run 'no-such-run'" in result.output


@pytest.mark.slow
def test_ask_best_of_returns_the_highest_reward_answer(
    tmp_path: Path, trained: tuple[RewardReport, Path, Path]
) -> None:
    from ragapp import App

    _, _, model_dir = trained
    ws = tmp_path / "ws"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(DOCS / "ingesting.md", corpus)  # the page that answers the question: best-of needs no more
    App(ws).ingest([corpus])
    env = {"RAGAPP_REWARD_MODEL": str(model_dir)}
    question = "How do I remove documents whose files were deleted?"
    args = ["-w", str(ws), "ask", "--best-of", "3", "--max-new-tokens", "24", "--json", question]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    candidates = answer["candidates"]
    assert len(candidates) == 3 and len({c["answer"] for c in candidates}) > 1  # seeds 0, 1, 2 differ
    best = max(candidates, key=lambda c: c["reward"])
    assert answer["answer"] == best["answer"] and answer["reward"] == best["reward"]
    model = load_reward_model(str(model_dir))  # the one `ask` loaded, as App shares it
    assert [c["reward"] for c in candidates] == pytest.approx(
        model.score([question] * 3, [c["answer"] for c in candidates]), abs=1e-5
    )
    again = CliRunner().invoke(cli, args, env=env)  # same seeds, same candidates
    assert json.loads(again.stdout)["candidates"] == candidates
