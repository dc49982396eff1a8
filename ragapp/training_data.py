"""Training files (JSONL) for finetune, reward and align: strict reading and deterministic splits.

Training on a silently shortened file gives a model nobody can explain, so unlike evaluation datasets a
malformed line stops the command, with the file and line named. Splits are decided by a hash of each
example's content, so they do not depend on line order and adding examples never moves old ones
between train and test.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ragapp.errors import UsageError

T = TypeVar("T")
MAX_BYTES = 500_000_000


class TrainingDataError(UsageError):
    """A training file that cannot be used as it is; the message names the file and line."""


@dataclass(frozen=True)
class Record:
    path: Path
    line: int  # 1-based
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def error(self, message: str) -> TrainingDataError:
        return TrainingDataError(f"{self.where}: {message}")

    def text(self, name: str, required: bool = True) -> str | None:
        """Field `name` as non-blank text."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(f"missing `{name}`")
            return None
        if not isinstance(value, str):
            raise self.error(f"`{name}` must be a string, not {type(value).__name__}")
        if required and not value.strip():
            raise self.error(f"`{name}` is empty")
        return value


def read_records(path: str | Path) -> list[Record]:
    """Every non-blank line of a JSONL file as a JSON object; blank lines are skipped."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TrainingDataError(f"training file not found: {path}")
    if not path.is_file():
        raise TrainingDataError(f"{path} is not a file (expected JSONL, one example per line)")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise TrainingDataError(f"{path} is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if b"\0" in raw[:8192]:
        raise TrainingDataError(f"{path} is a binary file, not JSONL")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[: exc.start].count(b"\n") + 1
        raise TrainingDataError(f"{path}:{bad}: not UTF-8 text") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(data, dict):
            raise TrainingDataError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
        records.append(Record(path, number, data))
    if not records:
        raise TrainingDataError(f"{path} has no examples (it is empty)")
    return records


@dataclass(frozen=True)
class Split(Generic[T]):
    train: list[T]
    validation: list[T]
    test: list[T]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def split(
    items: Sequence[T], key: Callable[[T], str], validation: float = 0.1, test: float = 0.1, seed: int = 0
) -> Split[T]:
    """Train/validation/test by the order of sha256(seed, key(item)): deterministic and order-independent.

    A non-zero share gets at least one item whenever there are enough items to leave one for training.
    """
    for name, share in (("validation", validation), ("test", test)):
        if not 0 <= share < 1:
            raise UsageError(f"the {name} share must be in [0, 1), got {share}")
    if validation + test >= 1:
        raise UsageError("validation and test shares leave nothing to train on")
    ranked = sorted(items, key=lambda item: hashlib.sha256(f"{seed}\0{key(item)}".encode()).hexdigest())
    n = len(ranked)

    def count(share: float) -> int:
        return max(1, round(n * share)) if share > 0 else 0

    n_test = count(test)
    n_val = count(validation)
    if n - n_test - n_val < 1:
        raise TrainingDataError(
            f"{n} example(s) are too few to split into train, validation and test; add examples or lower the shares"
        )
    return Split(train=ranked[n_test + n_val :], validation=ranked[n_test : n_test + n_val], test=ranked[:n_test])


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
