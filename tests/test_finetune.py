"""`ragapp finetune`: reading every example shape, the split, completion-only loss, and real training of
the shipped SmolLM2 with each method on a small task, loaded back by the backends."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from ragapp.errors import UsageError
from ragapp.finetune import finetune, read_examples, read_templates, sft_trainer, split_by_task
from ragapp.generators import GenerationConfig
from ragapp.generators.adapters import AdapterError
from ragapp.training import labelled_positions_only, load_base
from ragapp.training_data import TrainingDataError, read_records, split
from tests.lora import shipped_generator

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown", "grey", "cyan"]
GREEDY = GenerationConfig(max_new_tokens=12)


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small task the base model cannot know: which colour each numbered item has (read, never written)."""
    rows = [
        {"prompt": f"What colour is item number {i}?", "completion": f"Item {i} is {c}."} for i, c in enumerate(COLOURS)
    ]
    return write(tmp_path_factory.mktemp("colours") / "colours.jsonl", rows)


# -- reading --------------------------------------------------------------------------------------


def test_every_shape_becomes_prompt_messages_and_completion(tmp_path: Path) -> None:
    data = write(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "P1", "completion": "C1", "system": "S"},
            {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
            {"instruction": "Translate", "input": "chat", "output": "cat"},
            {"question": "Q?", "answer": "Ans."},
        ],
    )
    examples = read_examples(data, rag_prompt=lambda q: [{"role": "user", "content": f"passages + {q}"}])
    assert [e.prompt for e in examples] == [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "P1"}],
        [{"role": "user", "content": "U"}],
        [{"role": "user", "content": "Translate\n\nchat"}],
        [{"role": "user", "content": "passages + Q?"}],
    ]
    assert [e.completion for e in examples] == ["C1", "A", "cat", "Ans."]
    assert [e.line for e in examples] == [1, 2, 3, 4]


def test_templates_fill_fields_per_task(tmp_path: Path) -> None:
    templates = tmp_path / "t.toml"
    templates.write_text(
        '[tasks.sum]\nprompt = "Summarise: {text}"\ncompletion = "{summary}"\n'
        '[tasks.qa]\nprompt = "Q: {q}"\ncompletion = "{a}"\nsystem = "Be brief."\n',
        encoding="utf-8",
    )
    data = write(
        tmp_path / "mix.jsonl",
        [{"task": "sum", "text": "long", "summary": "short"}, {"task": "qa", "q": "why", "a": "because"}],
    )
    a, b = read_examples(data, read_templates(templates))
    assert (a.task, a.prompt, a.completion) == ("sum", [{"role": "user", "content": "Summarise: long"}], "short")
    assert b.prompt[0] == {"role": "system", "content": "Be brief."} and b.completion == "because"

    bad = write(tmp_path / "bad.jsonl", [{"task": "qa", "q": "why"}, {"task": "other", "x": 1}])
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:1: the completion template needs field `a`"):
        read_examples(bad, read_templates(templates))
    with pytest.raises(TrainingDataError, match=r"bad2.jsonl:1: task .other. has no template"):
        read_examples(write(tmp_path / "bad2.jsonl", [{"task": "other", "x": 1}]), read_templates(templates))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "p"}', "missing `completion`"),
        ('{"prompt": "p", "completion": "  "}', "`completion` is empty"),
        ('{"prompt": 3, "completion": "c"}', "`prompt` must be a string"),
        ('{"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"}]}', "last message"),
        ('{"messages": [{"role": "robot", "content": "u"}, {"role": "assistant", "content": "v"}]}', "message 1"),
        ('{"text": "what is this"}', "unknown shape"),
        ('{"question": "q", "answer": "a"}', "prompted with passages from a workspace"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "fine", "completion": "ok"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match=rf"d.jsonl:3: .*{message}"):
        read_examples(data)


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="not found"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match="no examples"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(TrainingDataError, match=r"latin1.jsonl:1: not UTF-8"):
        read_records(tmp_path / "latin1.jsonl")
    (tmp_path / "blob.jsonl").write_bytes(b"\x00\x01binary")
    with pytest.raises(TrainingDataError, match="binary"):
        read_records(tmp_path / "blob.jsonl")
    with pytest.raises(TrainingDataError, match="not a file"):
        read_records(tmp_path)


def test_split_is_deterministic_and_independent_of_line_order() -> None:
    items = [f"example {i}" for i in range(50)]
    a = split(items, str, 0.1, 0.2, seed=0)
    b = split(list(reversed(items)), str, 0.1, 0.2, seed=0)
    assert (a.sizes(), sorted(a.test), sorted(a.validation)) == (b.sizes(), sorted(b.test), sorted(b.validation))
    assert a.sizes() == {"train": 35, "validation": 5, "test": 10}
    assert set(a.train) | set(a.validation) | set(a.test) == set(items)
    assert sorted(split(items, str, 0.1, 0.2, seed=1).test) != sorted(a.test)  # the seed matters
    # adding examples never moves old ones across train/test
    grown = split([*items, *(f"new {i}" for i in range(10))], str, 0.1, 0.2, seed=0)
    assert not set(a.train) & set(grown.test)
    with pytest.raises(TrainingDataError, match="too few"):
        split(["only", "two"], str, 0.1, 0.1)
    with pytest.raises(UsageError, match="nothing to train"):
        split(items, str, 0.5, 0.5)


def test_each_task_of_a_mix_is_held_out(tmp_path: Path) -> None:
    rows = [{"task": "a", "prompt": f"a{i}", "completion": "x"} for i in range(20)]
    rows += [{"task": "b", "prompt": f"b{i}", "completion": "y"} for i in range(10)]
    train, val, test = split_by_task(read_examples(write(tmp_path / "m.jsonl", rows)), 0.1, 0.1, 0)
    assert {e.task for e in test} == {"a", "b"} and {e.task for e in val} == {"a", "b"}
    assert len(train) + len(val) + len(test) == 30


def test_bad_requests_fail_before_training(tmp_path: Path, colours: Path) -> None:
    with pytest.raises(UsageError, match="--merge applies to LoRA only"):
        finetune(colours, tmp_path / "o", method="prompt-tuning", merge=True)
    with pytest.raises(UsageError, match="unknown method"):
        finetune(colours, tmp_path / "o", method="qlora")
    with pytest.raises(Exception, match="not found"):
        finetune(colours, tmp_path / "o", base=str(tmp_path / "no-such-model"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists and is not empty"):
        finetune(colours, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()


def test_cli_reports_a_bad_line_without_traceback(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["-w", str(tmp_path / "ws"), "finetune", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "d.jsonl:2: not valid JSON" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


# -- real training ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_covers_completion_tokens_only(colours: Path) -> None:
    base, tokenizer = load_base(None)
    examples = read_examples(colours)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = sft_trainer(base, tokenizer, examples[:1], [], "lora", 8, scratch, 1, 1, 1e-4, 0)
        row = trainer.train_dataset[0]
        prompt_ids = tokenizer.apply_chat_template(examples[0].prompt, add_generation_prompt=True, return_dict=False)
        completion_ids = tokenizer(examples[0].completion, add_special_tokens=False)["input_ids"]
        labels = trainer.data_collator([row])["labels"][0].tolist()
        n = len(prompt_ids)
        assert row["input_ids"][:n] == list(prompt_ids)
        assert labels[:n] == [-100] * n  # nothing of the prompt (system, question, template) is learned
        learned = labels[n:]
        # the completion, then the end-of-turn marker the model must learn to stop with
        assert learned[: len(completion_ids)] == completion_ids
        assert tokenizer.decode(learned[len(completion_ids) :]).strip() == "<|im_end|>"


def test_scoring_labelled_positions_only_gives_the_same_loss_and_gradients(
    colours: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`labelled_positions_only` skips the prompt and padding in TRL's LM head: same loss, same LoRA gradients."""
    import torch
    from trl.trainer import utils as trl_utils

    switch = getattr(trl_utils, "_use_triton", None)
    assert switch is not None, "TRL renamed the switch: labelled_positions_only now does nothing"
    scored: list[int] = []  # positions each call of TRL's LM head projects onto the vocabulary
    head = trl_utils._ChunkedLogProbFunction

    class CountingHead:
        @staticmethod
        def apply(hidden: torch.Tensor, *args: object) -> object:
            scored.append(hidden.shape[0])
            return head.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingHead)
    base, tokenizer = load_base(None)
    examples = read_examples(colours)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = sft_trainer(base, tokenizer, examples[:4], [], "lora", 8, scratch, 1, 4, 1e-4, 0)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        targets = batch["labels"][:, 1:]  # what each position predicts: the next token
        labelled = int((targets != -100).sum())
        assert labelled < targets.numel() // 2  # most positions are prompt or padding

        trainer.model.eval()  # no LoRA dropout: both passes see the same network

        def loss_and_grads() -> tuple[float, list]:
            trainer.model.zero_grad()
            loss = trainer.compute_loss(trainer.model, dict(batch))
            loss.backward()
            grads = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]
            return loss.item(), grads

        every_position = loss_and_grads()
        with labelled_positions_only():
            labelled_only = loss_and_grads()
        assert trl_utils._use_triton is switch  # put back
        assert scored == [targets.numel(), labelled]
        assert labelled_only[0] == pytest.approx(every_position[0], rel=1e-5)
        assert len(labelled_only[1]) == len(every_position[1]) > 0
        for a, b in zip(labelled_only[1], every_position[1], strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_lora_learns_saves_merges_and_loads_in_transformers(tmp_path: Path, colours: Path) -> None:
    from ragapp.generators.transformers_local import TransformersGenerator

    out = tmp_path / "colours-lora"
    result = CliRunner().invoke(
        cli,
        [
            "-w",
            str(tmp_path / "ws"),
            "finetune",
            str(colours),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--lr",
            "2e-3",
            "--merge",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["examples"] == {"train": 10, "validation": 1, "test": 1, "dropped": 0}
    assert 0 < report["trainable_share"] < 0.01  # LoRA r=8 on q/k/v/o: well under 1 % of the weights
    assert report["steps"] == 6 and report["seconds_per_step"] > 0  # 10 examples in batches of 4, 2 epochs
    assert report["train_loss"][-1] < report["train_loss"][0]
    assert len(report["validation_loss"]) == 3 and report["validation_loss"][-1] < report["validation_loss"][0]
    assert report["test_loss_after"] < report["test_loss_before"]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    split_sizes = [sum(1 for _ in (out / "data" / f"{s}.jsonl").open()) for s in ("train", "validation", "test")]
    assert split_sizes == [10, 1, 1]
    assert json.loads((out / "ragapp-finetune.json").read_text())["method"] == "lora"

    question = [{"role": "user", "content": "What colour is item number 4?"}]
    tuned = TransformersGenerator(adapter=str(out)).load()
    merged = TransformersGenerator(str(out / "merged")).load()
    base = shipped_generator()
    answer = tuned.generate(question, GREEDY)
    assert answer == merged.generate(question, GREEDY)  # merging keeps the model the adapter made
    assert answer != base.generate(question, GREEDY)
    assert answer.startswith("Item 4 is")
    assert tuned.reference_nll(question, "Item 4 is black.")[0] < base.reference_nll(question, "Item 4 is black.")[0]


@pytest.mark.slow
def test_prompt_tuning_trains_and_loads_in_transformers_only(tmp_path: Path, colours: Path) -> None:
    from ragapp.generators.transformers_local import TransformersGenerator
    from ragapp.generators.vllm_local import VllmGenerator

    soft = finetune(colours, tmp_path / "soft", method="prompt-tuning", epochs=1)
    assert soft.trainable_params == 16 * 576  # 16 virtual tokens × SmolLM2's hidden size
    assert len(soft.validation_loss) == 2 and soft.validation_loss[-1] < soft.validation_loss[0]
    question = [{"role": "user", "content": "What colour is item number 2?"}]
    assert TransformersGenerator(adapter=str(tmp_path / "soft")).load().generate(question, GREEDY).strip()
    with pytest.raises(AdapterError, match="transformers backend only"):
        VllmGenerator(adapter=str(tmp_path / "soft"))


@pytest.mark.slow
def test_full_finetuning_trains_and_loads(tmp_path: Path, colours: Path) -> None:
    from ragapp.generators.transformers_local import TransformersGenerator

    full = finetune(colours, tmp_path / "full", method="full", epochs=2)
    assert full.trainable_share == 1.0
    assert full.test_loss_after is not None and full.test_loss_before is not None
    assert full.test_loss_after < full.test_loss_before
    question = [{"role": "user", "content": "What colour is item number 2?"}]
    assert TransformersGenerator(str(tmp_path / "full")).load().generate(question, GREEDY).startswith("Item 2 is")
