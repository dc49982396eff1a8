"""The types every connector produces: a document's text plus the sections citations point at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    """A stretch of a document's text that a citation can name (a page, a heading, a row block).

    `start` is the offset of `text` inside `Document.text`, so chunk offsets stay absolute.
    """

    text: str
    start: int
    heading: str | None = None
    anchor: str | None = None
    page: int | None = None


@dataclass
class Document:
    source: str
    kind: str
    text: str
    sections: list[Section]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# The reason given, followed by the suffix, for files no parser reads; callers group them by it.
UNSUPPORTED = "unsupported file type"


@dataclass(frozen=True)
class FileProblem:
    """A file that was not ingested, and why (shown to the user and stored with the ingest run)."""

    source: str
    reason: str


class ParseError(Exception):
    """A file could not be turned into text; the message is the reason shown to the user."""
