"""Chunking with the real MiniLM tokenizer: token limits, absolute offsets, section metadata kept."""

from __future__ import annotations

import itertools

import pytest
from ragapp.connectors.formats import parse_markdown
from transformers import AutoTokenizer

from ragapp.chunking import Chunker
from ragapp.embedding import shipped_model_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(shipped_model_path(), local_files_only=True)


MARKDOWN = (
    "# Guide\n\nIntro paragraph about the guide.\n\n"
    "## Installing things\n\n"
    + "\n\n".join(f"Step {i}: run the installer with option {i} and check the log for errors." for i in range(40))
    + "\n\n## Short section\n\nOnly one line here.\n"
)


def test_chunks_fit_the_token_limit_and_point_into_the_text(tokenizer) -> None:
    doc = parse_markdown("/guide.md", MARKDOWN.encode())
    chunker = Chunker(tokenizer, chunk_tokens=60, overlap_tokens=10)
    chunks = chunker.chunk(doc)
    assert len(chunks) > 5
    for chunk in chunks:
        assert doc.text[chunk.start : chunk.end] == chunk.text
        assert chunk.token_count == len(tokenizer.encode(chunk.text, add_special_tokens=False))
        assert chunk.token_count <= 60
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chunks_keep_their_section_and_never_cross_it(tokenizer) -> None:
    doc = parse_markdown("/guide.md", MARKDOWN.encode())
    chunks = Chunker(tokenizer, chunk_tokens=60, overlap_tokens=30).chunk(doc)
    install = [c for c in chunks if c.heading == "Installing things"]
    assert len(install) > 3 and all(c.anchor == "installing-things" for c in install)
    assert all("Only one line" not in c.text for c in install)
    short = [c for c in chunks if c.heading == "Short section"]
    assert len(short) == 1 and "Only one line here." in short[0].text
    # Overlap (whole paragraphs of up to 30 tokens are repeated): consecutive chunks share text.
    assert any(b.start < a.end for a, b in itertools.pairwise(install))


def test_larger_chunks_mean_fewer_chunks(tokenizer) -> None:
    doc = parse_markdown("/guide.md", MARKDOWN.encode())
    small = Chunker(tokenizer, chunk_tokens=40, overlap_tokens=0).chunk(doc)
    large = Chunker(tokenizer, chunk_tokens=200, overlap_tokens=0).chunk(doc)
    assert len(large) < len(small)


def test_token_counts_match_the_tokenizer_past_its_padding_and_length_limits(tokenizer) -> None:
    """The counter calls the Rust tokenizer directly; the shipped one pads to 128 and the model stops at
    512, and neither may leak into the counts (a padded count would make every chunk look 128 tokens)."""
    chunker = Chunker(tokenizer)
    texts = ["", "one", "naïve café – déjà vu", "x" * 3000, " ".join(f"word{i}" for i in range(900)), MARKDOWN]
    for text in texts:
        assert chunker.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False, verbose=False))
    assert chunker.count_tokens(texts[4]) > 512
