"""BEIR test collections: corpus.jsonl, queries.jsonl and qrels/<split>.tsv in one folder.

Each corpus entry becomes a Document whose `source` is its BEIR `_id`, so retrieved passages map
straight back to the relevance judgements.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ragapp.connectors.base import Document, Section


class CollectionError(Exception):
    """The folder is not a usable BEIR collection; the message says what is missing."""


@dataclass
class BeirCollection:
    folder: Path
    problems: list[str] = field(default_factory=list)  # corpus lines that could not be used, and why

    @classmethod
    def open(cls, folder: str | Path) -> BeirCollection:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise CollectionError(f"{folder}: not a folder (expected a BEIR folder with corpus.jsonl)")
        for name in ("corpus.jsonl", "queries.jsonl", "qrels"):
            if not (folder / name).exists():
                raise CollectionError(
                    f"{folder}: no {name} (expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv)"
                )
        return cls(folder)

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.folder / "qrels").glob("*.tsv"))

    def documents(self) -> Iterator[Document]:
        """The corpus, streamed; bad or empty entries are skipped and recorded in `problems`."""
        for number, entry in self._jsonl("corpus.jsonl"):
            text = entry.get("text")
            title = entry.get("title")
            if not isinstance(text, str) or not isinstance(title, str | None):
                self.problems.append(f"corpus.jsonl:{number}: text and title must be strings")
                continue
            if not text.strip():
                self.problems.append(f"corpus.jsonl:{number}: empty text")
                continue
            title = (title or "").strip() or None
            yield Document(str(entry["_id"]), "beir", text, [Section(text, 0)], title=title)

    def queries(self) -> dict[str, str]:
        out = {}
        for number, entry in self._jsonl("queries.jsonl"):
            if not isinstance(entry.get("text"), str) or not entry["text"].strip():
                self.problems.append(f"queries.jsonl:{number}: no query text")
                continue
            out[str(entry["_id"])] = entry["text"]
        return out

    def qrels_path(self, split: str) -> Path:
        path = self.folder / "qrels" / f"{split}.tsv"
        if not path.is_file():
            raise CollectionError(f"{self.folder}: no split {split!r} (found: {', '.join(self.splits()) or 'none'})")
        return path

    def _jsonl(self, name: str) -> Iterator[tuple[int, dict]]:
        with open(self.folder / name, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.problems.append(f"{name}:{number}: invalid JSON ({exc.msg})")
                    continue
                if not isinstance(entry, dict) or "_id" not in entry:
                    self.problems.append(f"{name}:{number}: expected an object with an _id")
                    continue
                yield number, entry
