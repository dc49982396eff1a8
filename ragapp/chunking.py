"""Split documents into chunks that fit the embedding model, inside section boundaries.

Sizes are counted in the embedding model's own tokens, so no chunk is silently truncated when
embedded, and every chunk keeps the heading, anchor, page and absolute character offsets of its text.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ragapp.connectors import Document


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    start: int
    end: int
    token_count: int
    heading: str | None = None
    anchor: str | None = None
    page: int | None = None


class Chunker:
    def __init__(self, tokenizer: Any, chunk_tokens: int = 200, overlap_tokens: int = 32):
        self._count = _token_counter(tokenizer)
        self._splitter = RecursiveCharacterTextSplitter(
            length_function=self.count_tokens, chunk_size=chunk_tokens, chunk_overlap=overlap_tokens
        )

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def chunk(self, document: Document) -> list[Chunk]:
        chunks: list[Chunk] = []
        for section in document.sections:
            search_from = 0
            for piece in self._splitter.split_text(section.text):
                # The splitter keeps text verbatim but strips it, so each piece is found in order.
                at = section.text.find(piece, search_from)
                if at < 0:
                    at = search_from
                search_from = at + 1
                start = section.start + at
                chunks.append(
                    Chunk(
                        ordinal=len(chunks),
                        text=piece,
                        start=start,
                        end=start + len(piece),
                        token_count=self.count_tokens(piece),
                        heading=section.heading,
                        anchor=section.anchor,
                        page=section.page,
                    )
                )
        return chunks


def _token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Counts tokens as the model sees them. The splitter measures every piece of every section (about a
    dozen calls per chunk), so a fast tokenizer is called on its Rust core directly, which takes half the
    time of the Python wrapper (and needs padding and truncation off: the shipped model pads to 128)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        # verbose=False: long pieces are only measured here, never fed to the model whole.
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False, verbose=False))
    core = copy.deepcopy(backend)
    core.no_padding()
    core.no_truncation()
    return lambda text: len(core.encode(text, add_special_tokens=False))
