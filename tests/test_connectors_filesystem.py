"""Discovery, safe reading and per-format parsing, on real files built inside each test."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx
import pytest
from pypdf import PdfReader, PdfWriter
from ragapp.connectors import formats
from ragapp.connectors.base import Document, FileProblem, ParseError
from ragapp.connectors.filesystem import (
    DEFAULT_EXCLUDE,
    SUPPORTED_SUFFIXES,
    discover,
    outside_reason,
    parse,
    read_bytes,
)

from tests.pdf_files import assemble_pdf

MB = 1_000_000  # decimal, like the max_file_mb setting
SPHINX_PAGE = Path("/usr/share/doc/python3.11/html/library/argparse.html")


# --- helpers ------------------------------------------------------------------------------------


def assert_offsets(doc: Document) -> None:
    """Every section is an exact, in-order slice of the document text."""
    assert doc.sections, "a parsed document always has at least one section"
    previous_end = 0
    for section in doc.sections:
        assert doc.text[section.start : section.start + len(section.text)] == section.text
        assert section.start >= previous_end
        previous_end = section.start + len(section.text)


def load(path: Path) -> Document:
    """Read and parse like the ingest pipeline does, checking the offset invariant on the way."""
    doc = parse(path, read_bytes(path, 10 * MB))
    assert doc.source == str(path)
    assert_offsets(doc)
    return doc


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def reason(path: Path, data: bytes | str) -> str:
    """The ParseError message for a file that must be rejected."""
    write(path, data)
    with pytest.raises(ParseError) as caught:
        parse(path, read_bytes(path, 10 * MB))
    return str(caught.value)


def make_pdf(pages: list[list[str]], title: str = "Test manual") -> bytes:
    """A minimal but complete PDF 1.4 (catalog, page tree, Helvetica text, xref), written by hand so
    the reader under test does not read its own writer's output."""
    count = len(pages)
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Title ({title}) /Producer (hand-written test fixture) >>".encode(),
    ]
    for i, lines in enumerate(pages):
        shown = " ".join("({}) Tj T*".format(line.replace("(", r"\(").replace(")", r"\)")) for line in lines)
        stream = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {6 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    return assemble_pdf(objects, trailer=b"/Info 4 0 R")


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Root ignores permission bits, so as root run the block with the effective uid of nobody."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(65534)
        try:
            os.seteuid(65534)
        except OSError:
            os.setegid(0)
            raise
    except OSError as exc:
        pytest.skip(f"running as root and cannot drop privileges to test permission errors: {exc}")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can traverse (pytest's tmp_path parent is 0700, which would hide the error)."""
    path = Path(tempfile.mkdtemp(prefix="ragapp-fs-test-")).resolve()
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        with contextlib.suppress(OSError):
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


# --- discover -----------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for rel in ("a.md", "b.txt", "image.png", "README", "NOTES.MD", ".hidden.md", ".git/config.md",
                "node_modules/pkg/readme.md", "__pycache__/x.txt", "sub/__pycache__/y.txt", "docs/guide.md",
                "docs/api/ref.html", "docs/notes.log", "drafts/wip.md"):  # fmt: skip
        write(root / rel, "text")
    write(tmp_path / "outside" / "ext.md", "outside the root")
    (root / "link_to_a.md").symlink_to(root / "a.md")
    (root / "outside_link.md").symlink_to(tmp_path / "outside" / "ext.md")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "outside_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "dangling.md").symlink_to(root / "missing.md")
    return root


def test_discover_walks_sorted_skips_hidden_and_defaults_reports_problems(tree: Path) -> None:
    found = list(discover([tree]))
    outside = tree.parent / "outside" / "ext.md"
    assert found == [
        tree / "NOTES.MD",  # suffixes are matched case-insensitively
        FileProblem(str(tree / "README"), "unsupported file type (no extension)"),
        tree / "a.md",
        tree / "b.txt",
        FileProblem(str(tree / "dangling.md"), "broken symlink"),
        tree / "docs/api/ref.html",
        tree / "docs/guide.md",
        tree / "docs/notes.log",
        tree / "drafts/wip.md",
        FileProblem(str(tree / "image.png"), "unsupported file type '.png'"),
        # link_to_a.md resolves to a.md, yielded under its own name; loop/ and outside_dir/ are not followed
        FileProblem(str(tree / "outside_link.md"), outside_reason(outside)),  # a file link out of the folder
    ]
    assert all(p.is_absolute() for p in found if isinstance(p, Path))
    assert list(discover([tree])) == found  # deterministic


def test_discover_include_matches_name_at_any_depth_or_relative_path(tmp_path: Path) -> None:
    for rel in ("a.md", "b.txt", "notes.log", "api/x.md", "api/v1/y.html", "docs/api/z.md", "docs/c.md",
                "drafts/d.md"):  # fmt: skip
        write(tmp_path / rel, "x")

    def rels(**filters: list[str]) -> list[str]:
        found = list(discover([tmp_path], **filters))
        assert all(isinstance(p, Path) for p in found)
        return [p.relative_to(tmp_path).as_posix() for p in found if isinstance(p, Path)]

    assert rels(include=["*.md"]) == ["a.md", "api/x.md", "docs/api/z.md", "docs/c.md", "drafts/d.md"]
    assert rels(include=["api/**"]) == ["api/v1/y.html", "api/x.md"]  # relative to the root: not docs/api
    assert rels(include=["api/*.md"]) == ["api/x.md"]  # '*' does not cross '/'
    assert rels(include=["**/api/**"]) == ["api/v1/y.html", "api/x.md", "docs/api/z.md"]
    assert rels(exclude=["drafts/**", "*.log"]) == [
        "a.md", "api/v1/y.html", "api/x.md", "b.txt", "docs/api/z.md", "docs/c.md",
    ]  # fmt: skip
    assert rels(exclude=["api"]) == ["a.md", "b.txt", "docs/c.md", "drafts/d.md", "notes.log"]  # any depth
    assert rels(exclude=["/api"]) == [  # a leading '/' anchors at the root
        "a.md", "b.txt", "docs/api/z.md", "docs/c.md", "drafts/d.md", "notes.log",
    ]  # fmt: skip
    assert rels(include=["*.md"], exclude=["docs/**"]) == ["a.md", "api/x.md", "drafts/d.md"]


def test_default_excludes_always_apply(tmp_path: Path) -> None:
    write(tmp_path / "keep.md", "x")
    write(tmp_path / "deep/node_modules/lib/readme.md", "x")
    write(tmp_path / "venv/lib/site-packages/pkg/doc.txt", "x")
    write(tmp_path / "notes.md~", "x")
    assert "**/node_modules/**" in DEFAULT_EXCLUDE
    assert list(discover([tmp_path], include=["*.md", "*.txt"])) == [tmp_path / "keep.md"]


def test_discover_file_roots_missing_roots_and_overlaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md = write(tmp_path / "docs" / "one.md", "x")
    png = write(tmp_path / "pic.png", b"\x89PNG")
    monkeypatch.chdir(tmp_path)
    found = list(discover([Path("docs/one.md"), Path("pic.png"), Path("nope"), Path("docs"), tmp_path]))
    assert found == [
        md,  # a relative root comes back absolute; the later overlapping roots do not repeat it
        FileProblem(str(png), "unsupported file type '.png'"),
        FileProblem(str(tmp_path / "nope"), "no such file or directory"),
    ]
    # a root named explicitly bypasses include/exclude and the hidden-file rule
    hidden = write(tmp_path / ".secret.md", "x")
    assert list(discover([hidden], include=["*.txt"])) == [hidden]


def test_discover_reports_special_files(tmp_path: Path) -> None:
    write(tmp_path / "a.md", "x")
    os.mkfifo(tmp_path / "pipe.txt")
    assert list(discover([tmp_path])) == [
        tmp_path / "a.md",
        FileProblem(str(tmp_path / "pipe.txt"), "not a regular file"),
    ]


def test_discover_reports_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a.md").symlink_to(tmp_path / "b.md")
    (tmp_path / "b.md").symlink_to(tmp_path / "a.md")
    assert list(discover([tmp_path])) == [
        FileProblem(str(tmp_path / "a.md"), "symlink loop"),
        FileProblem(str(tmp_path / "b.md"), "symlink loop"),
    ]
    assert list(discover([tmp_path / "a.md"])) == [FileProblem(str(tmp_path / "a.md"), "symlink loop")]


def test_symlinked_files_keep_the_link_name_and_links_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    write(root / "real.md", "inside")
    write(root / ".drafts" / "plan.md", "hidden inside")
    secret = write(tmp_path / "private" / "secret.txt", "outside the folder")
    (root / "a_link_to_real.md").symlink_to(root / "real.md")  # sorts first: the target still keeps its name
    (root / "plan.md").symlink_to(root / ".drafts" / "plan.md")  # the only way in: ingested as plan.md
    (root / "notes.txt").symlink_to(secret)
    (root / "relative.txt").symlink_to(Path("..") / "private" / "secret.txt")
    assert list(discover([root])) == [
        FileProblem(str(root / "notes.txt"), outside_reason(secret)),
        root / "real.md",
        FileProblem(str(root / "relative.txt"), outside_reason(secret)),
        root / "plan.md",  # links come after the walk, under the link's name
    ]
    assert outside_reason(secret).startswith(f"symlink to a file outside the folder ({secret}): not followed")
    assert list(discover([root, secret])) == [*list(discover([root])), secret]  # named itself, it is ingested


@pytest.mark.timeout(20)
def test_symlink_loops_and_self_links_do_not_hang(tmp_path: Path) -> None:
    (tmp_path / "self.txt").symlink_to(tmp_path / "self.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "x.md").symlink_to(tmp_path / "sub" / "up" / "sub" / "x.md")
    assert list(discover([tmp_path])) == [
        FileProblem(str(tmp_path / "self.txt"), "symlink loop"),
        FileProblem(str(tmp_path / "sub" / "x.md"), "symlink loop"),
    ]


def test_discover_reports_unreadable_directory(shared_dir: Path) -> None:
    write(shared_dir / "ok.md", "x")
    write(shared_dir / "secret" / "hidden.md", "x")
    (shared_dir / "secret").chmod(0o000)
    with unprivileged():
        found = list(discover([shared_dir]))
    assert found == [
        shared_dir / "ok.md",
        FileProblem(str(shared_dir / "secret"), "permission denied: cannot list directory"),
    ]


# --- read_bytes ---------------------------------------------------------------------------------


def test_read_bytes_returns_content_up_to_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"12345")
    assert read_bytes(path, 5) == b"12345"
    with pytest.raises(ParseError, match=r"^file is 5 bytes, over the 4 bytes limit$"):
        read_bytes(path, 4)


def test_read_bytes_too_large_names_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    with path.open("wb") as handle:  # sparse: no real disk use
        handle.truncate(int(31.2 * MB))
    with pytest.raises(ParseError, match=r"^file is 31\.2 MB, over the 20 MB limit$"):
        read_bytes(path, 20 * MB)
    with path.open("wb") as handle:
        handle.truncate(20 * MB + 1)
    with pytest.raises(ParseError, match=r"^file is 20,000,001 bytes, over the 20,000,000 bytes limit$"):
        read_bytes(path, 20 * MB)


@pytest.mark.timeout(20)
def test_read_bytes_refuses_fifo_directory_and_device_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, Path("/dev/null")):
        with pytest.raises(ParseError, match=r"^not a regular file$"):
            read_bytes(path, MB)


def test_read_bytes_reports_os_errors(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.txt", "x")
    with pytest.raises(ParseError, match=r"^cannot read file: Not a directory$"):  # ENOTDIR, even as root
        read_bytes(plain / "child.txt", MB)
    with pytest.raises(ParseError, match=r"^file not found$"):
        read_bytes(tmp_path / "missing.txt", MB)
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    with pytest.raises(ParseError, match=r"^file not found$"):
        read_bytes(tmp_path / "dangling.txt", MB)


def test_read_bytes_permission_denied(shared_dir: Path) -> None:
    path = write(shared_dir / "locked.txt", "secret")
    path.chmod(0o000)
    with unprivileged(), pytest.raises(ParseError, match=r"^permission denied$"):
        read_bytes(path, MB)


# --- dispatch and text decoding -----------------------------------------------------------------


def test_supported_suffixes_and_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert SUPPORTED_SUFFIXES == {
        ".txt", ".text", ".rst", ".log", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx",
        ".csv", ".tsv", ".json", ".jsonl", ".ndjson",
    }  # fmt: skip
    with pytest.raises(ParseError, match=r"^unsupported file type '\.png'$"):
        parse(tmp_path / "x.png", b"\x89PNG")
    kinds = {".TXT": "text", ".rst": "text", ".log": "text", ".text": "text", ".MD": "markdown"}
    for suffix, kind in kinds.items():
        assert load(write(tmp_path / f"f{suffix}", "hello")).kind == kind

    def broken(source: str, data: bytes) -> Document:
        raise ValueError("boom")

    monkeypatch.setitem(formats.PARSERS, ".txt", broken)  # a parser bug costs one file, not the run
    with pytest.raises(ParseError, match=r"^could not parse: ValueError: boom$"):
        parse(tmp_path / "f.txt", b"hello")


def test_plain_text_utf8_bom_and_crlf(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "a.txt", b"\xef\xbb\xbfLine one\r\nLine two\r\n\r\n"))
    assert doc.kind == "text"
    assert doc.text == "Line one\nLine two\n\n"
    assert [(s.text, s.start, s.heading) for s in doc.sections] == [("Line one\nLine two", 0, None)]
    assert doc.warnings == []


def test_cp1252_text_is_decoded_with_a_warning(tmp_path: Path) -> None:
    text = "Café déjà vu — naïve “quotes” cost 5 €.\nLe cœur a ses raisons.\n"
    doc = load(write(tmp_path / "legacy.txt", text.encode("cp1252")))
    assert doc.text == text
    assert doc.warnings == ["not UTF-8; decoded as cp1252"]


def test_latin1_and_utf16_text(tmp_path: Path) -> None:
    text = "Größe und Übermaß, ça va très bien. Señor año.\n"
    doc = load(write(tmp_path / "latin.txt", text.encode("latin-1")))
    assert doc.text == text
    assert doc.warnings[0].startswith("not UTF-8; decoded as ")
    doc = load(write(tmp_path / "wide.txt", text.encode("utf-16")))
    assert (doc.text, doc.warnings) == (text, ["not UTF-8; decoded as utf-16"])


def test_binary_and_empty_files_are_rejected(tmp_path: Path) -> None:
    png_header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"
    assert reason(tmp_path / "image.txt", png_header) == "binary file, not text"
    assert reason(tmp_path / "noise.md", bytes(range(1, 256)) * 8) == "binary file, not text"
    assert reason(tmp_path / "data.json", b'{"a": "\x00"}') == "binary file, not text"
    for name in ("empty.txt", "empty.md", "empty.pdf", "empty.docx", "empty.json", "empty.csv", "empty.html"):
        assert reason(tmp_path / name, b"") == "empty file"
    assert reason(tmp_path / "blank.md", "  \n\n\t\n") == "empty file"
    assert reason(tmp_path / "bom.txt", b"\xef\xbb\xbf\r\n") == "empty file"


def test_utf8_with_a_stray_byte_stays_utf8_with_a_warning(tmp_path: Path) -> None:
    """One bad byte in UTF-8 German text must not turn every umlaut into cp1250 mojibake ("GrĂĽĂźe")."""
    text = "Herzliche Grüße aus München. Die Straße ist schön.\n" * 3
    doc = load(write(tmp_path / "gruss.txt", text.encode() + b"caf\xe9 kaputt\n"))
    assert "Grüße" in doc.text and "München" in doc.text
    assert doc.text == text + "caf\ufffd kaputt\n"
    assert doc.warnings == ["invalid UTF-8: 1 byte replaced with U+FFFD, the rest decoded as UTF-8"]


def test_utf8_cut_mid_character_or_with_a_trailing_ff_is_not_binary(tmp_path: Path) -> None:
    whole = ("naïve café " * 20).encode()
    doc = load(write(tmp_path / "cut.txt", whole[: whole.rindex("é".encode()) + 1]))  # é cut after its 1st byte
    assert doc.text.startswith("naïve café naïve") and doc.text.endswith("naïve caf\ufffd")
    assert doc.warnings == ["invalid UTF-8: 1 byte replaced with U+FFFD, the rest decoded as UTF-8"]
    doc = load(write(tmp_path / "ff.md", ("naïve café" * 20).encode() + b"\xff"))
    assert doc.text == "naïve café" * 20 + "\ufffd"
    damaged = "Größe: ".encode() + b"\xe9\xff\xfe" + " Übermaß und Grüße, schöne Maße.".encode()
    assert load(write(tmp_path / "three.txt", damaged)).warnings == [
        "invalid UTF-8: 3 bytes replaced with U+FFFD, the rest decoded as UTF-8"
    ]


def test_other_encodings_still_decode_through_charset_normalizer(tmp_path: Path) -> None:
    german = "Herzliche Grüße aus München, schöne Straße. Größe und Übermaß.\n"
    doc = load(write(tmp_path / "cp1252.txt", german.encode("cp1252")))
    assert (doc.text, doc.warnings) == (german, ["not UTF-8; decoded as cp1252"])
    doc = load(write(tmp_path / "utf16.txt", german.encode("utf-16")))
    assert (doc.text, doc.warnings) == (german, ["not UTF-8; decoded as utf-16"])
    japanese = "日本語のテキストです。これは文字コードを判定するための文章です。東京は日本の首都です。\n" * 3
    doc = load(write(tmp_path / "sjis.txt", japanese.encode("shift_jis")))
    assert doc.text == japanese
    assert doc.warnings == ["not UTF-8; decoded as cp932"]  # Microsoft's Shift-JIS


def test_random_bytes_without_nul_are_still_binary(tmp_path: Path) -> None:
    import random

    noise = bytes(b for b in random.Random(7).randbytes(20_000) if b)
    assert reason(tmp_path / "noise.txt", noise) == "binary file, not text"


# --- Markdown -----------------------------------------------------------------------------------

MARKDOWN = """Intro line before headings.

# User Guide

Welcome.

```bash
# not a heading
echo hi
```

## Install & Setup!

Steps.

## Install & Setup!

Again.

### FAQ ###

#hashtag is not a heading
    # indented four spaces: not a heading
~~~~
## fenced with tildes: not a heading
~~~~
## Last
"""


def test_markdown_sections_anchors_and_title(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "guide.md", MARKDOWN))
    assert doc.kind == "markdown"
    assert doc.text == MARKDOWN
    assert doc.title == "User Guide"
    assert [(s.heading, s.anchor) for s in doc.sections] == [
        (None, None),
        ("User Guide", "user-guide"),
        ("Install & Setup!", "install--setup"),
        ("Install & Setup!", "install--setup-1"),
        ("FAQ", "faq"),
        ("Last", "last"),
    ]
    intro, guide, _, _, faq, last = doc.sections
    assert intro.text == "Intro line before headings."
    assert guide.text.startswith("# User Guide\n") and "# not a heading\necho hi" in guide.text
    assert "## fenced with tildes: not a heading" in faq.text and faq.text.startswith("### FAQ ###")
    assert last.text == "## Last"


def test_markdown_title_falls_back_to_file_stem(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "release-notes.markdown", "## Only a subheading\n\ntext\n"))
    assert doc.title == "release-notes"
    assert [(s.heading, s.anchor, s.text) for s in doc.sections] == [
        ("Only a subheading", "only-a-subheading", "## Only a subheading\n\ntext")
    ]


# --- HTML ---------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html><head><title>Widget Manual — Acme 2.0 documentation</title>
<script>var x = "SCRIPT";</script><style>.a { color: red }</style></head>
<body>
<header>SITE BANNER</header>
<nav>NAV LINKS</nav>
<div class="sphinxsidebar">SIDEBAR TEXT</div>
<div class="related" role="navigation">RELATED LINKS</div>
<main>
<p>Intro   paragraph
   with   spaces.</p>
<section id="getting-started"><h1>Getting started<a class="headerlink" href="#getting-started">¶</a></h1>
<p>First <b>bold</b> para.</p>
<ul><li>one</li><li><p>two</p></li></ul>
<pre>def f():
    return  1</pre>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>speed</td><td><p>fast</p></td></tr></table>
<h2 id="own">Own id</h2><p>x</p>
<h2><a name="legacy"></a>Legacy anchor</h2><p>y</p>
<h3>No anchor</h3>
<aside>ASIDE</aside><form><input value="FORM"/>FORM</form><noscript>NOSCRIPT</noscript>
<!-- COMMENT -->
<p>line1<br>line2</p>
</section>
</main>
<footer>FOOTER</footer>
<div class="footer">SPHINX FOOTER</div>
</body></html>
"""


def test_html_main_content_blocks_sections_and_anchors(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "manual.html", HTML))
    assert doc.kind == "html"
    assert doc.title == "Widget Manual"
    assert doc.text == (
        "Intro paragraph with spaces.\n\n"
        "Getting started\n\n"
        "First bold para.\n\n"
        "one\ntwo\n\n"
        "def f():\n    return  1\n\n"
        "Name | Value\nspeed | fast\n\n"
        "Own id\n\nx\n\n"
        "Legacy anchor\n\ny\n\n"
        "No anchor\n\n"
        "line1\nline2"
    )
    assert [(s.heading, s.anchor) for s in doc.sections] == [
        (None, None),
        ("Getting started", "getting-started"),  # the enclosing <section id>
        ("Own id", "own"),
        ("Legacy anchor", "legacy"),  # <a name> inside the heading
        ("No anchor", None),
    ]
    assert doc.sections[0].text == "Intro paragraph with spaces."
    assert doc.sections[-1].text == "No anchor\n\nline1\nline2"


def test_xhtml_with_xml_prolog_parses_as_html_without_warnings(tmp_path: Path) -> None:
    """DocBook output (the Debian FAQ) starts with <?xml ...?>; bs4 warns about it unless told not to."""
    page = (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>FAQ</title></head>'
        '<body><h2 class="title"><a id="whatisfaq"></a>1.1. What is this FAQ?</h2><p>Answers.</p></body></html>'
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = load(write(tmp_path / "faq.en.html", page))
    assert doc.title == "FAQ" and "Answers." in doc.text
    assert [(s.heading, s.anchor) for s in doc.sections][-1] == ("1.1. What is this FAQ?", "whatisfaq")


def test_html_without_main_uses_body_and_keeps_article_header(tmp_path: Path) -> None:
    page = """<html><body><header>BANNER</header>
    <article><header><h1 id="post">Post title</h1><p>by Ada</p></header><p>Body text.</p></article>
    <footer>FOOT</footer></body></html>"""
    doc = load(write(tmp_path / "post.htm", page))
    assert doc.title == "Post title"  # no <title>: first h1
    assert doc.text == "Post title\n\nby Ada\n\nBody text."
    assert [(s.heading, s.anchor) for s in doc.sections] == [("Post title", "post")]
    doc = load(write(tmp_path / "plain.html", "<p>just a <i>fragment</i></p>"))
    assert (doc.text, doc.title) == ("just a fragment", None)
    assert reason(tmp_path / "chrome.html", "<nav>only navigation</nav><script>x()</script>") == "no text found"


@pytest.mark.skipif(not SPHINX_PAGE.exists(), reason=f"{SPHINX_PAGE} not installed (python3.11-doc)")
def test_real_sphinx_page_drops_navigation_and_keeps_anchors() -> None:
    doc = load(SPHINX_PAGE)
    assert doc.title == "argparse — Parser for command-line options, arguments and sub-commands"
    for chrome in ("Table of Contents", "Previous topic", "Next topic", "This Page", "Show Source",
                   "Quick search", "Python Software Foundation", "¶"):  # fmt: skip
        assert chrome not in doc.text
    headed = [s for s in doc.sections if s.heading]
    assert len(headed) > 20 and all(s.anchor for s in headed)
    anchors = {s.heading: s.anchor for s in headed}
    assert anchors["Core Functionality"] == "core-functionality"
    assert doc.sections[0].anchor == "module-argparse"
    assert "\n    " in doc.text  # code examples keep their indentation


# --- PDF ----------------------------------------------------------------------------------------


def test_pdf_one_section_per_page_with_text(tmp_path: Path) -> None:
    data = make_pdf([["Alpha page one", "second line (x)"], [], ["Gamma page three"]])
    doc = load(write(tmp_path / "manual.pdf", data))
    assert doc.kind == "pdf"
    assert doc.title == "Test manual"
    assert doc.metadata == {"pages": 3}
    assert doc.text == "Alpha page one\nsecond line (x)\n\nGamma page three"
    assert [(s.page, s.anchor, s.text) for s in doc.sections] == [
        (1, "page=1", "Alpha page one\nsecond line (x)"),
        (3, "page=3", "Gamma page three"),  # the blank page 2 is skipped
    ]


def test_pdf_errors(tmp_path: Path) -> None:
    good = make_pdf([["Some text"], ["More text"]])
    assert reason(tmp_path / "fake.pdf", b"this is not a pdf at all") == "corrupt PDF: no PDF header (not a PDF file)"
    assert reason(tmp_path / "garbage.pdf", b"%PDF-1.4\n\x01\x02 garbage").startswith("corrupt PDF: ")
    assert reason(tmp_path / "truncated.pdf", good[:200]).startswith("corrupt PDF: ")
    assert reason(tmp_path / "locked.pdf", encrypt_pdf(good, "secret")) == "encrypted PDF"
    assert reason(tmp_path / "scan.pdf", make_pdf([[], []])) == "no extractable text (scanned PDF?)"


def test_pdf_with_empty_user_password_opens(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "restricted.pdf", encrypt_pdf(make_pdf([["Readable"], ["Also readable"]]), "")))
    assert [(s.page, s.text) for s in doc.sections] == [(1, "Readable"), (2, "Also readable")]


def test_pdf_repair_warnings_are_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_pdf([["Recovered text"]])
    head, _, tail = data.rpartition(b"startxref\n")
    damaged = head + b"startxref\n" + b"12" + tail.split(b"\n", 1)[1]  # wrong xref offset: pypdf repairs it
    caplog.set_level(logging.WARNING)
    doc = load(write(tmp_path / "damaged.pdf", damaged))
    assert doc.text == "Recovered text"
    assert [r for r in caplog.records if r.name.startswith("pypdf")] == []


# --- Word ---------------------------------------------------------------------------------------


def test_docx_headings_tables_in_document_order(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_heading("Widget Guide", 0)  # "Title" style
    document.add_paragraph("Intro paragraph.")
    document.add_heading("Install", 1)
    document.add_paragraph("Run the installer.")
    table = document.add_table(rows=3, cols=2)
    for row, values in zip(table.rows, (("Name", "Value"), ("speed", "fast"), ("", ""))):
        for cell, value in zip(row.cells, values):
            cell.text = value
    merged = table.rows[2].cells[0].merge(table.rows[2].cells[1])
    merged.text = "spans both columns"
    document.add_paragraph("After the table.")
    document.add_paragraph("")
    document.add_heading("Install", 2)
    document.add_paragraph("Second install section.")
    path = tmp_path / "guide.docx"
    document.save(str(path))

    doc = load(path)
    assert doc.kind == "docx"
    assert doc.title == "Widget Guide"
    assert doc.text == (
        "Widget Guide\n\nIntro paragraph.\n\nInstall\n\nRun the installer.\n\n"
        "Name | Value\nspeed | fast\nspans both columns\n\n"
        "After the table.\n\nInstall\n\nSecond install section."
    )
    assert [(s.heading, s.anchor) for s in doc.sections] == [
        ("Widget Guide", "widget-guide"),
        ("Install", "install"),
        ("Install", "install-1"),
    ]
    assert doc.sections[1].text == (
        "Install\n\nRun the installer.\n\nName | Value\nspeed | fast\nspans both columns\n\nAfter the table."
    )


def test_docx_errors(tmp_path: Path) -> None:
    assert reason(tmp_path / "old.docx", b"\xd0\xcf\x11\xe0 an old binary .doc") == (
        "corrupt .docx: not a Word document (zip) package"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "a zip, but not a Word document")
    assert reason(tmp_path / "zip.docx", buffer.getvalue()).startswith("corrupt .docx: ")
    empty = docx.Document()
    empty.save(str(tmp_path / "blank.docx"))
    with pytest.raises(ParseError, match=r"^no text found$"):
        load(tmp_path / "blank.docx")


# --- CSV / TSV ----------------------------------------------------------------------------------


def test_csv_rows_become_labelled_lines(tmp_path: Path) -> None:
    data = 'name,city,notes\nAda,London,\nLinus,,"kernel, git"\n\n"Grace","New\nYork",compilers,extra\n'
    doc = load(write(tmp_path / "people.csv", data))
    assert doc.kind == "csv"
    assert doc.text == (
        "name: Ada; city: London\n"
        "name: Linus; notes: kernel, git\n"
        "name: Grace; city: New York; notes: compilers; column 4: extra"
    )
    assert doc.metadata == {"rows": 3, "columns": ["name", "city", "notes"]}
    assert [(s.start, s.heading) for s in doc.sections] == [(0, None)]


def test_csv_sniffs_delimiter_and_tsv_uses_tabs(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "semi.csv", "a;b\n1;2\n3;4\n"))
    assert doc.text == "a: 1; b: 2\na: 3; b: 4"
    doc = load(write(tmp_path / "table.tsv", "key\tvalue\nx\ty, z\n"))
    assert doc.text == "key: x; value: y, z"
    assert doc.metadata["columns"] == ["key", "value"]


def test_csv_legacy_encoding_and_header_only(tmp_path: Path) -> None:
    data = "name,city\nJosé,São Paulo\nFrançois,Zürich\n".encode("cp1252")
    doc = load(write(tmp_path / "cities.csv", data))
    assert doc.text == "name: José; city: São Paulo\nname: François; city: Zürich"
    assert doc.warnings == ["not UTF-8; decoded as cp1252"]
    assert reason(tmp_path / "header.csv", "a,b,c\n") == "no data rows"


# --- JSON / JSON Lines --------------------------------------------------------------------------


def test_json_is_flattened_to_paths(tmp_path: Path) -> None:
    value = {
        "name": "ragapp",
        "version": 1.5,
        "tags": ["a", "b"],
        "nested": {"ok": True, "gone": None, "items": [{"x": 1}]},
    }
    doc = load(write(tmp_path / "config.json", json.dumps(value, indent=2)))
    assert doc.kind == "json"
    assert doc.text == "name: ragapp\nversion: 1.5\ntags[0]: a\ntags[1]: b\nnested.ok: true\nnested.items[0].x: 1"
    assert load(write(tmp_path / "scalar.json", '"just a string"')).text == "just a string"


def test_json_errors_say_where(tmp_path: Path) -> None:
    assert reason(tmp_path / "bad.json", '{\n  "a": 1,\n  "b": \n}') == "invalid JSON: line 4 column 1: Expecting value"
    assert reason(tmp_path / "nothing.json", '{"a": null, "b": {}}') == "no text found"
    assert reason(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000) == "invalid JSON: nested too deeply"


def test_jsonl_records_and_bad_lines(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "log.jsonl", '{"a": 1}\nnot json\n\n{"b": {"c": "d"}}\n'))
    assert doc.kind == "jsonl"
    assert doc.text == "a: 1\n\nb.c: d"
    assert doc.warnings == ["line 2: invalid JSON, skipped"]
    assert doc.metadata == {"records": 2}

    lines = ['{"ok": true}'] + ["{broken"] * 8
    doc = load(write(tmp_path / "many.ndjson", "\n".join(lines)))
    assert doc.text == "ok: true"
    skipped = [f"line {n}: invalid JSON, skipped" for n in range(2, 7)]
    assert doc.warnings == [*skipped, "3 more invalid lines skipped"]

    assert reason(tmp_path / "all-bad.jsonl", "nope\n{bad\n") == (
        "invalid JSON Lines: none of the 2 lines is valid JSON (line 1: Expecting value)"
    )


# --- the offset invariant, once per registered suffix -------------------------------------------


def _sample(suffix: str, path: Path) -> None:
    if suffix == ".pdf":
        write(path, make_pdf([["page one"], ["page two"]]))
    elif suffix == ".docx":
        document = docx.Document()
        document.add_paragraph("preamble")
        document.add_heading("Part", 1)
        document.add_paragraph("body")
        document.save(str(path))
    elif suffix in (".html", ".htm"):
        write(path, HTML)
    elif suffix in (".md", ".markdown"):
        write(path, MARKDOWN)
    elif suffix in (".csv", ".tsv"):
        write(path, "a,b\n1,2\n".replace(",", "\t" if suffix == ".tsv" else ","))
    elif suffix == ".json":
        write(path, '{"a": [1, 2]}')
    elif suffix in (".jsonl", ".ndjson"):
        write(path, '{"a": 1}\n{"b": 2}\n')
    else:
        write(path, "\n\n  plain text  \n\nsecond paragraph\n")


@pytest.mark.parametrize("suffix", sorted(SUPPORTED_SUFFIXES))
def test_section_offsets_hold_for_every_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"sample{suffix}"
    _sample(suffix, path)
    doc = load(path)  # asserts doc.text[s.start:s.start + len(s.text)] == s.text for every section
    assert all(s.text == s.text.strip() and s.text for s in doc.sections)
