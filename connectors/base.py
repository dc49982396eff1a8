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


MB = 1_000_000  # decimal megabytes, as the ingest.max_*_mb settings count them


def human_size(n: int) -> str:
    """Decimal units, as the `ingest.max_*_mb` settings use them."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class ParseLimits:
    """What one file may cost to parse, so a compression bomb costs one file and never the process.

    `expanded_bytes` caps what a compressed format unpacks to (a .docx's zip members, a PDF's page
    content streams summed over pages); `elements` caps the XML/HTML elements; `seconds` (wall time)
    and `memory_bytes` (address space of the parser process) are enforced by `ragapp.connectors.sandbox`.
    """

    expanded_bytes: int = 200 * MB
    elements: int = 2_000_000
    seconds: float = 60.0
    memory_bytes: int = 2000 * MB
