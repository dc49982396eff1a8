"""The repeat guard every backend applies to its answers (ragapp.generators.base.RepeatGuard).

Pure functions on strings: no model. The real model's loops are cut in test_generator_transformers.py and
test_generator_vllm.py, and the openai backend's in test_generator_openai.py.
"""

from __future__ import annotations

import random

import pytest

from ragapp.generators.base import AnswerFilter, RepeatGuard, cut_answer, cut_at_repeat, cut_at_stop, repeats


def streamed(text: str, sizes: list[int], guard: RepeatGuard | AnswerFilter | None = None) -> list[str]:
    """What a stream of `text` in pieces of the given sizes emits, piece by piece, then the finish."""
    guard = guard or RepeatGuard()
    out, i = [], 0
    for size in sizes:
        if i >= len(text) or guard.stopped:
            break
        out.append(guard.push(text[i : i + size]))
        i += size
    return [*out, guard.finish()]


LOOP = (
    "[3] Each file is parsed in a sandboxed worker process.\n\n"
    "[4] Each file is parsed in a sandboxed worker process.\n\n"
    "[5] Each file is parsed in a sandboxed worker process.\n\n[6] Each file is parsed in a sandboxed worker"
)  # what SmolLM2-135M writes for a RAG prompt, greedy


def test_a_loop_is_cut_at_the_first_repeat() -> None:
    assert cut_at_repeat(LOOP) == "[3] Each file is parsed in a sandboxed worker process."
    text = "Paris is the capital of France. It is big. Paris is the capital of France. It is big."
    assert cut_at_repeat(text) == "Paris is the capital of France. It is big."
    assert repeats(text) and not repeats("Paris is the capital of France. Paris is the capital of France.")
    lines = "The sync option removes deleted files\nThe sync option removes deleted files\nmore"
    assert cut_at_repeat(lines) == "The sync option removes deleted files"


@pytest.mark.parametrize(
    "again",
    [
        "paris is the capital of france.",  # case
        "Paris  is the\tcapital of France.",  # whitespace
        "Paris is the capital of France [1].",  # citation marks
        "Paris is the capital [1, 2] of France!",
        "Paris is the capital of France",  # punctuation, ended by a newline
    ],
)
def test_near_duplicates_count_as_repeats(again: str) -> None:
    first = "Paris is the capital of France. Its museums are famous."
    assert cut_at_repeat(f"{first} {again}\nNext.") == first


@pytest.mark.parametrize(
    "text",
    [
        "Yes.\nYes.\nYes.\n",  # short sentences
        "}\n}\n}\n",
        "- Debian 12\n- Debian 12\n",  # short list items
        "for i in range(10):\n    total += i\nfor i in range(10):\n    total += i\n",  # code
        "if (value == other) {\n  return;\n}\nif (value == other) {\n  return;\n}\n",
        "Run it twice.\n\nRun it twice.",  # under 15 characters
    ],
)
def test_short_and_code_like_lines_never_count(text: str) -> None:
    assert cut_at_repeat(text) == text and not repeats(text)


def test_a_partial_repeat_at_the_end_is_dropped() -> None:
    first = "Each file is parsed in a sandboxed worker process."
    assert cut_at_repeat(f"{first} Each file is par") == first  # cut off by max_new_tokens mid-word
    assert cut_at_repeat(f"{first}\n\nEach file is parsed in a sandboxed worker process.") == first  # ended
    # What only starts like an earlier sentence, then ends, is an answer, not a repeat.
    assert cut_at_repeat(f"{first} Each file.") == f"{first} Each file."
    assert cut_at_repeat(f"{first} Each file is parsed again") == f"{first} Each file is parsed again"
    assert cut_at_repeat(f"{first} [1]\n") == f"{first} [1]\n"  # a trailing citation or newline stays


def test_text_without_repeats_passes_unchanged_and_is_held_back_only_while_it_could_repeat() -> None:
    text = "Paris is the capital of France.\nParis is big and old [1]. Lyon is smaller."
    assert cut_at_repeat(text) == text
    guard, emitted, lag = RepeatGuard(), "", []
    for i, char in enumerate(text):
        emitted += guard.push(char)
        lag.append(text[: i + 1].removeprefix(emitted))  # what is held back after each character
    assert emitted + guard.finish() == text and not guard.stopped
    held = {i + 1: rest for i, rest in enumerate(lag) if rest}  # characters read: what is held back
    # Nothing is held before a sentence could repeat, nor once the second one reads "Paris is b" rather than
    # "Paris is t"; the whitespace after a sentence waits for the next one's first letter.
    assert held == {n: text[31:n] for n in range(32, 42)} | {58: " "}
    assert held[41] == "\nParis is "


def test_chunked_streaming_equals_one_shot() -> None:
    """Property: any cut of a text into pieces streams out exactly `cut_at_repeat` of the whole text."""
    rng = random.Random(0)
    words = ["Paris", "is", "the", "capital", "of", "France", "[1]", "[1, 2]", "[", "1", ",", ".", "!", "?",
             "\n", "\n\n", "it", "PARIS", "]", ":", "(", ")", "=", "each file is parsed."]  # fmt: skip
    for _ in range(3000):
        text = "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.6:  # make loops common
            text += text[rng.randint(0, len(text)) :] * rng.randint(1, 3)
        expected = cut_at_repeat(text)
        assert text.startswith(expected)
        sizes = [rng.randint(1, 8) for _ in range(len(text))]
        assert "".join(streamed(text, sizes)) == expected, (text, sizes)
    for size in range(1, 12):  # every piece size over the real loop
        assert "".join(streamed(LOOP, [size] * len(LOOP))) == cut_at_repeat(LOOP)


def test_a_stream_stops_at_the_repeat() -> None:
    guard = RepeatGuard()
    assert guard.push("It parses each file in a worker. ") == "It parses each file in a worker."
    assert guard.push("It parses each file in a") == "" and not guard.stopped  # held: it may be a repeat
    assert guard.push(" worker.") == "" and not guard.stopped  # the sentence is not over until whitespace
    assert guard.push(" And") == "" and guard.stopped
    assert guard.push("more") == guard.finish() == ""


def test_stop_strings_apply_first_then_the_guard() -> None:
    loop = "Sync removes deleted documents. Sync removes deleted documents.\nQuestion: why?"
    assert cut_answer(loop, ["\nQuestion:"]) == "Sync removes deleted documents."
    assert cut_answer(loop, ["deleted"]) == "Sync removes "  # a stop string before the repeat ends it first
    # A repeat cut off by a stop string is still a partial repeat at the end of the answer.
    assert cut_answer("Sync removes deleted documents. Sync removes\n\n[2]", ["\n\n["]) == (
        "Sync removes deleted documents."
    )
    rng = random.Random(1)
    for text in (loop, LOOP, "Sync removes deleted documents. Sync removes it.\n\n[2] more"):
        for stops in ([], ["\nQuestion:"], ["\n\n["], ["deleted"], ["removes it"]):
            sizes = [rng.randint(1, 6) for _ in range(len(text))]
            assert "".join(streamed(text, sizes, AnswerFilter(stops))) == cut_answer(text, stops)
            assert cut_answer(text, stops) == cut_at_repeat(cut_at_stop(text, stops))
