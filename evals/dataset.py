"""Evaluation datasets: JSONL, one question per line. Bad lines are reported by number and skipped.

Fields: `question`; the reference answer as `answer` or `reference`; optional `sources` (a path or
id, or a list of them; `path#anchor` pins a section) for retrieval metrics; optional `id`; and, for
`eval score`, the answer to score as `prediction` (there `question` is optional: a given answer is
scored against its reference). `source_page` (the Debian/Django FAQ files' name
for it) is read as a single source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragapp.evals.results import Problem

from ragapp.errors import UsageError

MAX_BYTES = 200_000_000


@dataclass(frozen=True)
class Example:
    position: int  # 1-based line number
    item_id: str
    question: str
    reference: str
    sources: list[str] = field(default_factory=list)
    prediction: str | None = None


@dataclass
class Dataset:
    path: Path
    fingerprint: str  # sha256 of the file: a run is resumed only on the very same data
    examples: list[Example]
    problems: list[Problem]


def _text(row: dict[str, Any], *names: str) -> tuple[str | None, str | None]:
    """The first of `names` present in `row`, as text; or an error message."""
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            if not isinstance(value, str):
                return None, f"`{name}` must be a string, not {type(value).__name__}"
            return value, None
    return None, None


def _sources(row: dict[str, Any]) -> tuple[list[str], str | None]:
    value = row.get("sources", row.get("source_page"))
    if value is None:
        return [], None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return [], "`sources` must be a non-empty string or a list of them"
    return [v.strip() for v in value], None


def parse_line(position: int, raw: bytes, need_prediction: bool) -> Example | Problem:
    try:
        line = raw.decode("utf-8-sig" if position == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return Problem(position, f"not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return Problem(position, f"invalid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(row, dict):
        return Problem(position, f"expected a JSON object, got {type(row).__name__}")
    question, error = _text(row, "question")
    if error:
        return Problem(position, error)
    question = (question or "").strip()
    if not question and not need_prediction:  # scoring a given prediction against its reference needs none
        return Problem(position, "missing `question`")
    reference, error = _text(row, "answer", "reference")
    if error or reference is None:
        return Problem(position, error or "missing reference answer (`answer` or `reference`)")
    if not reference.strip():
        return Problem(position, "the reference answer is empty")
    prediction, error = _text(row, "prediction")
    if error or (need_prediction and prediction is None):
        return Problem(position, error or "missing `prediction`")
    sources, error = _sources(row)
    if error:
        return Problem(position, error)
    item_id = row.get("id", position)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        return Problem(position, "`id` must be a string or an integer")
    return Example(position, str(item_id), question, reference.strip(), sources, prediction)


def load_dataset(path: str | Path, need_prediction: bool = False) -> Dataset:
    """Read a JSONL dataset; raises UsageError only if the file is unusable as a whole."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UsageError(f"dataset {path} is a folder, not a JSONL file")
        if size > MAX_BYTES:
            raise UsageError(f"dataset {path} is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"dataset not found: {path}") from None
    except PermissionError:
        raise UsageError(f"dataset {path} is not readable (permission denied)") from None
    if b"\0" in data[:8192]:
        raise UsageError(f"dataset {path} looks binary; expected JSON Lines text")
    examples: list[Example] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for position, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        parsed = parse_line(position, raw, need_prediction)
        if isinstance(parsed, Example) and parsed.item_id in seen:
            parsed = Problem(position, f"duplicate id {parsed.item_id!r} (first on line {seen[parsed.item_id]})")
        if isinstance(parsed, Problem):
            problems.append(parsed)
        else:
            seen[parsed.item_id] = position
            examples.append(parsed)
    if not examples:
        detail = f"; line {problems[0].line}: {problems[0].reason}" if problems else ""
        raise UsageError(f"dataset {path} has no usable rows{detail}")
    return Dataset(path.resolve(), hashlib.sha256(data).hexdigest(), examples, problems)
