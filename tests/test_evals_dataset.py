"""Evaluation datasets: good rows load, every kind of bad row is named by its line, the rest survives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ragapp.evals.dataset import load_dataset

from ragapp.errors import UsageError

GOOD = {"question": "Q?", "answer": "A."}


def write(tmp_path: Path, lines: list[str | dict], name: str = "qa.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n", encoding="utf-8")
    return path


def test_fields_and_aliases(tmp_path: Path) -> None:
    ds = load_dataset(
        write(
            tmp_path,
            [
                {"question": " What? ", "answer": " This. ", "sources": "a.md", "id": 7},
                {"question": "Who?", "reference": "Them.", "sources": ["b.md#x", "c.md"]},
                {"question": "Where?", "answer": "Here.", "source_page": "/usr/share/doc/x/FAQ/a.html", "anchor": "q1"},
            ],
        )
    )
    a, b, c = ds.examples
    assert (a.position, a.item_id, a.question, a.reference, a.sources) == (1, "7", "What?", "This.", ["a.md"])
    assert (b.item_id, b.reference, b.sources) == ("2", "Them.", ["b.md#x", "c.md"])
    assert c.sources == ["/usr/share/doc/x/FAQ/a.html"]
    assert ds.problems == [] and len(ds.fingerprint) == 64


def test_bad_rows_are_named_by_line_and_the_rest_is_kept(tmp_path: Path) -> None:
    lines: list[str | dict] = [
        GOOD,
        "{not json",
        "[1, 2]",
        {"answer": "no question"},
        {"question": "   ", "answer": "blank question"},
        {"question": "no answer"},
        {"question": "Q", "answer": ""},
        {"question": 3, "answer": "A"},
        {"question": "Q", "answer": "A", "sources": [1]},
        {"question": "Q", "answer": "A", "id": [1]},
        "",
        {"question": "Q2", "answer": "A2", "id": "x"},
        {"question": "Q3", "answer": "A3", "id": "x"},
    ]
    ds = load_dataset(write(tmp_path, lines))
    assert [e.position for e in ds.examples] == [1, 12]
    reasons = {p.line: p.reason for p in ds.problems}
    assert reasons[2].startswith("invalid JSON")
    assert "JSON object" in reasons[3]
    assert reasons[4] == "missing `question`" and reasons[5] == "missing `question`"
    assert "reference answer" in reasons[6]
    assert reasons[7] == "the reference answer is empty"
    assert "`question` must be a string" in reasons[8]
    assert "`sources`" in reasons[9]
    assert "`id`" in reasons[10]
    assert 11 not in reasons  # blank lines are not problems
    assert reasons[13] == "duplicate id 'x' (first on line 12)"


def test_invalid_utf8_line_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "Q1", "answer": "A1"}\n{"question": "caf\xe9", "answer": "A"}\n')
    ds = load_dataset(path)
    assert [e.question for e in ds.examples] == ["Q1"]
    assert ds.problems[0].line == 2 and ds.problems[0].reason.startswith("not UTF-8")


def test_predictions_required_for_scoring(tmp_path: Path) -> None:
    path = write(tmp_path, [{**GOOD, "prediction": "A."}, GOOD])
    ds = load_dataset(path, need_prediction=True)
    assert [e.prediction for e in ds.examples] == ["A."]
    assert ds.problems[0].reason == "missing `prediction`"


def _file(name: str, data: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.jsonl", "dataset not found"),
        (lambda p: p, "is a folder"),
        (_file("bin.jsonl", b"\x00\x01\x02" * 100), "looks binary"),
        (_file("empty.jsonl", b""), "no usable rows"),
        (_file("blank.jsonl", b"\n\n  \n"), "no usable rows"),
        (_file("bad.jsonl", b'{"x": 1}\n'), "line 1: missing `question`"),
    ],
)
def test_unusable_files_raise_a_clear_usage_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_dataset(make(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, [GOOD])
    path.chmod(0)
    with pytest.raises(UsageError, match="permission denied"):
        load_dataset(path)


def test_shared_faq_dataset_loads_whole() -> None:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "faq_debian.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    ds = load_dataset(path)
    assert len(ds.examples) == 122 and not ds.problems
    assert all(e.sources and e.sources[0].startswith("/usr/share/doc/debian/FAQ/") for e in ds.examples)
