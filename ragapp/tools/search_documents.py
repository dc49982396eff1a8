"""search_documents: the workspace's retriever as a tool, returning numbered passages with their sources.

Numbers are unique across every search of one agent run (a `PassageLedger`), so an [n] in the final
answer names exactly one passage whichever call retrieved it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath

from langchain_core.tools import BaseTool, StructuredTool, ToolException

from ragapp.errors import RagappError
from ragapp.search import SearchHit

PASSAGE_CHARS = 700  # per passage shown to the model: a small model's window holds a few of them
MAX_QUERY_CHARS = 2000  # a search query, not a document: longer input is a model gone astray


@dataclass
class PassageLedger:
    """The passages one agent run has seen, numbered in order of first retrieval."""

    hits: list[SearchHit] = field(default_factory=list)
    _numbers: dict[int, int] = field(default_factory=dict)

    def number(self, hit: SearchHit) -> int:
        if hit.chunk_id not in self._numbers:
            self.hits.append(hit)
            self._numbers[hit.chunk_id] = len(self.hits)
        return self._numbers[hit.chunk_id]


def source_label(hit: SearchHit) -> str:
    """A short name for where a passage comes from: file name, page or heading."""
    name = PurePath(hit.source).name if "://" not in hit.source else hit.source.rsplit("/", 1)[-1]
    where = f"page {hit.page}" if hit.page else hit.heading
    return f"{name}, {where}" if where else name


def render_hits(numbered: list[tuple[int, SearchHit]]) -> str:
    if not numbered:
        return "No passage matches."
    blocks = []
    for n, hit in numbered:
        text = hit.text if len(hit.text) <= PASSAGE_CHARS else hit.text[:PASSAGE_CHARS].rstrip() + " …"
        blocks.append(f"[{n}] ({source_label(hit)}) {text}")
    return "\n\n".join(blocks)


def search_documents_tool(search: Callable[[str], list[SearchHit]], ledger: PassageLedger) -> BaseTool:
    """`search(query)` is the retriever (e.g. `lambda q: app.search(q, k=3)`)."""

    def search_documents(query: str) -> str:
        if not query.strip():
            raise ToolException("the query is empty: give a few words to search for")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolException(f"the query is too long: {len(query):,} characters (the limit is {MAX_QUERY_CHARS:,})")
        try:
            hits = search(query)
        except RagappError as exc:
            raise ToolException(str(exc)) from None
        return render_hits([(ledger.number(hit), hit) for hit in hits])

    return StructuredTool.from_function(
        search_documents,
        name="search_documents",
        description="Search the documents; returns numbered passages to cite like [1]. Input: a search query.",
        handle_tool_error=True,
    )
