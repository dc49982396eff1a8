"""One parser per file format, registered by suffix in `PARSERS`.

Every parser takes `(source, data)` and returns a `Document` whose sections are exact slices of its
text (`doc.text[s.start:s.start + len(s.text)] == s.text`), or raises `ParseError` with a reason a
user can act on. Parsers never touch the filesystem: reading is `ragapp.connectors.filesystem`'s job.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import logging
import re
import threading
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import IO, TYPE_CHECKING, Any

from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning
from bs4.element import NavigableString, Tag
from charset_normalizer import from_bytes

if TYPE_CHECKING:  # imported where a PDF or .docx is parsed: together 30 MB that a folder of text never needs
    from docx.document import Document as DocxDocument
    from docx.text.paragraph import Paragraph

from ragapp.connectors.base import UNSUPPORTED, Document, ParseError, ParseLimits, Section, human_size

Parser = Callable[[str, bytes], Document]
PARSERS: dict[str, Parser] = {}
DEFAULT_LIMITS = ParseLimits()
# Formats that unpack (zip, Flate streams) or build big trees: parsed in `ragapp.connectors.sandbox`'s worker
# process under `ParseLimits`, given to their parsers as `limits=`. The rest grow linearly with the
# file (at most ingest.max_file_mb) and are parsed in-process.
LIMITED: frozenset[str] = frozenset((".pdf", ".docx", ".html", ".htm"))

# (offset in the document text, heading, anchor, page) where a section starts.
_Mark = tuple[int, str | None, str | None, int | None]


def _register(*suffixes: str) -> Callable[[Parser], Parser]:
    def add(parser: Parser) -> Parser:
        for suffix in suffixes:
            PARSERS[suffix] = parser
        return parser

    return add


# --- shared helpers -----------------------------------------------------------------------------

# Single-byte code pages offered to charset-normalizer in a second pass: on short text its first
# pass often prefers a multi-byte CJK reading of a few accented Latin bytes.
_SINGLE_BYTE = (
    "cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
    "latin_1", "iso8859_2", "iso8859_5", "iso8859_7", "iso8859_9", "iso8859_15", "koi8_r", "mac_roman",
)  # fmt: skip


def _guess_encoding(data: bytes) -> str | None:
    """charset-normalizer's guess, preferring Windows-1252 when it reads the bytes about as cleanly.

    Detection on short text is noisy (a French cp1252 file comes back as cp1257 or Big5); cp1252 is
    by far the most common legacy encoding, so it wins near-ties. None means "not text".
    """
    matches = [*from_bytes(data), *from_bytes(data, cp_isolation=list(_SINGLE_BYTE))]
    if not matches:
        return None
    least = min(m.chaos for m in matches)
    close = [m for m in matches if m.chaos <= least + 0.1]
    if any("cp1252" in m.could_be_from_charset for m in close):
        return "cp1252"
    return str(min(close, key=lambda m: (m.chaos, -m.coherence)).encoding)


class _ReplacedBytes(threading.local):
    count = 0


_replaced = _ReplacedBytes()


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    """A codecs error handler: `errors="replace"` that also counts the bytes it replaced."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _replaced.count += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("ragapp.count-replace", _count_and_replace)


def _mostly_utf8(data: bytes) -> tuple[str, int] | None:
    """UTF-8 with a few damaged bytes (a stray byte, a file cut mid-character): the text, with U+FFFD
    for each bad sequence, and how many bytes were replaced; None when the bytes are not UTF-8 at heart.

    "At heart" means more well-formed multi-byte characters than bad bytes: a cp1252 or Shift-JIS file
    has almost none (its accented bytes are followed by ASCII), UTF-8 text with one bad byte has many.
    """
    _replaced.count = 0
    text = data.decode("utf-8", errors="ragapp.count-replace")
    bad = _replaced.count
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    well_formed = non_ascii - (text.count("\ufffd") - data.count(b"\xef\xbf\xbd"))
    return (text.removeprefix("\ufeff"), bad) if well_formed > bad else None


def decode_text(data: bytes) -> tuple[str, list[str]]:
    """Bytes to text with `\\n` newlines, plus a warning when the bytes were not clean UTF-8.

    Clean UTF-8 decodes as is; UTF-8 with a few bad bytes decodes as UTF-8 with U+FFFD in their place
    (guessing a legacy encoding for it would garble every accented letter); anything else goes to
    charset-normalizer; NUL bytes or bytes no encoding reads cleanly are "binary".
    """
    warns: list[str] = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text, warns = data.decode("utf-16"), ["not UTF-8; decoded as utf-16"]
        except UnicodeDecodeError:
            raise ParseError("binary file, not text") from None
    elif b"\x00" in data:
        raise ParseError("binary file, not text")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            if (damaged := _mostly_utf8(data)) is not None:
                text, bad = damaged
                plural = "byte" if bad == 1 else "bytes"
                warns = [f"invalid UTF-8: {bad} {plural} replaced with U+FFFD, the rest decoded as UTF-8"]
            elif (encoding := _guess_encoding(data)) is not None:
                text, warns = data.decode(encoding, errors="replace"), [f"not UTF-8; decoded as {encoding}"]
            else:
                raise ParseError("binary file, not text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n"), warns


def _require_text(text: str, reason: str = "empty file") -> None:
    if not text.strip():
        raise ParseError(reason)


def _cut(text: str, marks: list[_Mark]) -> list[Section]:
    """Sections between consecutive marks; text before the first mark is a section without heading."""
    bounds: list[_Mark] = [(0, None, None, None), *marks]
    sections = []
    for i, (start, heading, anchor, page) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        span = text[start:end]
        body = span.strip()
        if body:
            sections.append(Section(body, start + len(span) - len(span.lstrip()), heading, anchor, page))
    return sections


class _Blocks:
    """Joins text blocks into one string, remembering where sections start so offsets are exact."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.marks: list[_Mark] = []
        self._tight = False

    def add(self, block: str, tight: bool = False) -> None:
        """Append a block: tight blocks (list items, table rows) follow each other on the next line."""
        if not block.strip():
            return
        if self.parts:
            sep = "\n" if tight and self._tight else "\n\n"
            self.parts.append(sep)
            self.size += len(sep)
        self.parts.append(block)
        self.size += len(block)
        self._tight = tight

    def mark(self, heading: str | None = None, anchor: str | None = None, page: int | None = None) -> None:
        """Start a section at the next block."""
        self.marks.append((self.size + (2 if self.parts else 0), heading, anchor, page))

    def heading(self, text: str, anchor: str | None) -> None:
        if text:
            self.mark(text, anchor)
            self.add(text)

    def build(self) -> tuple[str, list[Section]]:
        text = "".join(self.parts)
        return text, _cut(text, self.marks)


class _Slugger:
    """GitHub-style heading anchors: lowercase, punctuation dropped, spaces to '-', repeats get -1, -2."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, heading: str) -> str:
        base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = self.seen.get(base, 0)
        self.seen[base] = count + 1
        return base if count == 0 else f"{base}-{count}"


def _short(exc: BaseException) -> str:
    """One line of an exception message, for a reason shown next to a file name."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError str() adds quotes
    lines = str(message).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def _document(source: str, kind: str, blocks: _Blocks, **fields: Any) -> Document:
    text, sections = blocks.build()
    _require_text(text, "no text found")
    return Document(source=source, kind=kind, text=text, sections=sections, **fields)


# --- plain text and Markdown --------------------------------------------------------------------


@_register(".txt", ".text", ".rst", ".log")
def parse_text(source: str, data: bytes) -> Document:
    """Plain text is one section; the chunker splits it further."""
    text, warns = decode_text(data)
    _require_text(text)
    return Document(source, "text", text, _cut(text, []), warnings=warns)


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")


@_register(".md", ".markdown")
def parse_markdown(source: str, data: bytes) -> Document:
    """Keeps the Markdown source as text and cuts sections at ATX headings outside code fences."""
    text, warns = decode_text(data)
    _require_text(text)
    slug, fence, title = _Slugger(), "", None
    marks: list[_Mark] = []
    for line in re.finditer(r"^.*$", text, re.MULTILINE):
        if fence:  # inside a fenced block: only its closing fence matters
            if re.fullmatch(rf" {{0,3}}{fence[0]}{{{len(fence)},}}[ \t]*", line[0]):
                fence = ""
            continue
        if opening := _FENCE.match(line[0]):
            fence = opening[1]
        elif (heading := _ATX.fullmatch(line[0])) and (name := (heading[2] or "").strip()):
            marks.append((line.start(), name, slug(name), None))
            if title is None and len(heading[1]) == 1:
                title = name
    return Document(source, "markdown", text, _cut(text, marks), title=title or PurePath(source).stem, warnings=warns)


# --- HTML ---------------------------------------------------------------------------------------

_CHROME_TAGS = frozenset((
    "script", "style", "noscript", "template", "nav", "footer", "aside", "form", "iframe", "svg",
))  # fmt: skip
_CHROME_DIVS = frozenset(("sphinxsidebar", "related", "footer"))  # Sphinx page furniture


def _is_chrome(tag: Tag) -> bool:
    """Navigation, sidebars, footers, scripts: never the page's content (a predicate beats CSS 3x)."""
    return (
        tag.name in _CHROME_TAGS
        or tag.get("role") == "navigation"
        or (tag.name == "div" and not _CHROME_DIVS.isdisjoint(tag.get("class") or ()))
        or (tag.name == "a" and "headerlink" in (tag.get("class") or ()))
        or (tag.name == "header" and tag.find_parent(("article", "main")) is None)  # keep an article's own
    )


def _main(soup: BeautifulSoup) -> Tag:
    """The first of main, [role=main], article, div.body, div.document, body."""
    found = (
        soup.find("main")
        or soup.find(role="main")
        or soup.find("article")
        or soup.find("div", class_="body")
        or soup.find("div", class_="document")
        or soup.body
    )
    return found if isinstance(found, Tag) else soup


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCK = frozenset((
    "address", "article", "blockquote", "caption", "dd", "details", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "header", "hr", "li", "main", "ol", "p", "section", "summary", "table",
    "tbody", "tfoot", "thead", "ul",
))  # fmt: skip
_BR = "\x00"  # stands for <br> while inline text is collected (NUL never survives decode_text)
_SPACES = re.compile(r"\s+")


def _inline(text: str) -> str:
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split(_BR)).strip()


def _anchor(heading: Tag, root: Tag) -> str | None:
    """The id a link to this heading would use: its own, its section's (Sphinx), or an <a> inside."""
    if heading.get("id"):
        return str(heading["id"])
    for parent in heading.parents:
        if parent.get("id") and parent.find(_HEADINGS) is heading:
            return str(parent["id"])
        if parent is root:
            break
    inner = heading.find("a", attrs={"name": True}) or heading.find(id=True)
    return str(inner.get("id") or inner.get("name")) if inner else None


def _walk(node: Tag, root: Tag, out: _Blocks, buf: list[str], tight: bool) -> None:
    """Depth-first over the content, flushing collected inline text whenever a block starts or ends."""

    def flush(tight: bool) -> None:
        out.add(_inline("".join(buf)), tight)
        buf.clear()

    for child in node.children:
        if isinstance(child, NavigableString):
            if type(child) is NavigableString:  # not a Comment, Doctype, CData...
                buf.append(str(child))
        elif not isinstance(child, Tag):
            continue
        elif child.name == "br":
            buf.append(_BR)
        elif child.name in _HEADINGS:
            flush(tight)
            out.heading(_inline(child.get_text()), _anchor(child, root))
        elif child.name == "pre":
            flush(tight)
            out.add(child.get_text().strip("\n"))
        elif child.name == "tr":
            flush(tight)
            cells = (_inline(cell.get_text()) for cell in child.find_all(("td", "th"), recursive=False))
            out.add(" | ".join(cell for cell in cells if cell), tight=True)
        elif child.name in _BLOCK:  # everything inside a list item stays on consecutive lines
            flush(tight)
            _walk(child, root, out, buf, tight or child.name == "li")
            flush(tight or child.name == "li")
        else:
            _walk(child, root, out, buf, tight)
    if node is root:
        flush(tight)


@_register(".html", ".htm")
def parse_html(source: str, data: bytes, *, limits: ParseLimits = DEFAULT_LIMITS) -> Document:
    """Main content only (no navigation, sidebars or footers), as blocks, sectioned at h1-h6.

    The tree BeautifulSoup builds costs about 1 KB per element, so 20 MB of `<p>` would need gigabytes:
    the element count is checked first."""
    _count_elements(io.BytesIO(data), 0, limits.elements, "HTML")
    text, warns = decode_text(data)
    _require_text(text)
    with warnings.catch_warnings():
        # XHTML (an <?xml ...?> prolog, as DocBook output has) is still HTML to read: parse it as such, quietly.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(text, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    title = re.sub(r"\s+[—–|-]\s+[^—–|]*\bdocumentation$", "", title)
    for element in soup.find_all(_is_chrome):
        if not element.decomposed:
            element.decompose()
    root = _main(soup)
    blocks = _Blocks()
    _walk(root, root, blocks, [], False)
    if not title and (h1 := root.find("h1")):
        title = _inline(h1.get_text())
    return _document(source, "html", blocks, title=title or None, warnings=warns)


# --- PDF ----------------------------------------------------------------------------------------


def _pdf_content_bytes(page: Any) -> int:
    """The decoded size of a page's content streams and the form XObjects it names: the text extractor
    parses all of it, once per page, however many pages share one stream."""
    from pypdf.generic import ArrayObject

    total = 0
    contents = page.get("/Contents")
    contents = contents.get_object() if contents is not None else None
    for stream in contents if isinstance(contents, ArrayObject) else [contents]:
        stream = stream.get_object() if stream is not None else None
        if stream is not None and hasattr(stream, "get_data"):
            total += len(stream.get_data())
    resources = page.get("/Resources")
    xobjects = resources.get_object().get("/XObject") if resources is not None else None
    for ref in xobjects.get_object().values() if xobjects is not None else ():
        form = ref.get_object()
        if hasattr(form, "get_data") and form.get("/Subtype") == "/Form":
            total += len(form.get_data())
    return total


def _pypdf_output_limits(cap: int) -> contextlib.AbstractContextManager[Any]:
    """pypdf's per-stream decompression limits (pypdf >= 6.5 `Configuration`), lowered to `cap`."""
    import pypdf

    if not hasattr(pypdf, "apply_configuration"):  # older pypdf: its module constants (75 MB) apply
        return contextlib.nullcontext()
    current = pypdf.get_configuration()
    names = [f"{name}_maximum_output_length" for name in ("zlib", "lzw", "run_length", "jbig2", "brotli")]
    return pypdf.apply_configuration(**{n: min(cap, getattr(current, n)) for n in names if hasattr(current, n)})


@_register(".pdf")
def parse_pdf(source: str, data: bytes, *, limits: ParseLimits = DEFAULT_LIMITS) -> Document:
    """One section per page with text; pypdf's warnings about damaged files are not our output.

    pypdf's own decompression limits are set to ours, and before any page is read, the content all
    pages will make the extractor parse is summed: pages that share one big Flate stream (a 7 KB file
    asking for minutes of work) are refused up front.
    """
    if b"%PDF-" not in data[:1024]:
        raise ParseError("corrupt PDF: no PDF header (not a PDF file)")
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    cap = limits.expanded_bytes
    too_much = f"which exceeds the decompressed-size limit of {human_size(cap)} (ingest.max_expanded_mb)"
    try:
        with warnings.catch_warnings(), _pypdf_output_limits(cap):
            warnings.simplefilter("ignore")
            reader = pypdf.PdfReader(io.BytesIO(data))  # tries the empty password itself
            if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
                raise ParseError("encrypted PDF")
            work = 0
            for number, page in enumerate(reader.pages, 1):
                work += _pdf_content_bytes(page)
                if work > cap:
                    raise ParseError(f"PDF pages 1-{number} unpack to {human_size(work)} of content, {too_much}")
            pages = [page.extract_text() or "" for page in reader.pages]
            meta = reader.metadata
            title = (meta.title or "").strip() if meta else ""
    except ParseError:
        raise
    except FileNotDecryptedError:
        raise ParseError("encrypted PDF") from None
    except DependencyError:
        raise ParseError("encrypted PDF (decrypting it needs the 'cryptography' package)") from None
    except LimitReachedError as exc:
        raise ParseError(f"PDF exceeds a pypdf safety limit: {_short(exc)}") from None
    except MemoryError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise ParseError(f"corrupt PDF: {_short(exc)}") from None
    blocks = _Blocks()
    for number, page_text in enumerate(pages, 1):
        page_text = page_text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
        if page_text:
            blocks.mark(anchor=f"page={number}", page=number)
            blocks.add(page_text)
    text, sections = blocks.build()
    _require_text(text, "no extractable text (scanned PDF?)")
    return Document(source, "pdf", text, sections, title=title or None, metadata={"pages": len(pages)})


# --- Word ---------------------------------------------------------------------------------------


_XML_PARTS = (".xml", ".rels")


def _count_elements(stream: IO[bytes], counted: int, limit: int, what: str) -> int:
    """Start tags read so far, streaming (a bomb is never held whole): `<` minus `</`, `<?` and `<!`."""
    carry = b""
    while chunk := stream.read(1 << 20):
        chunk, carry = carry + chunk, b""
        if chunk.endswith(b"<"):  # the next chunk says what kind of tag this is
            chunk, carry = chunk[:-1], b"<"
        counted += chunk.count(b"<") - chunk.count(b"</") - chunk.count(b"<?") - chunk.count(b"<!")
        if counted > limit:
            raise ParseError(
                f"{what} has more than {limit:,} elements, which exceeds the element limit (ingest.max_elements)"
            )
    return counted


def _check_docx_package(data: bytes, limits: ParseLimits) -> None:
    """Refuse a zip bomb before python-docx unpacks it: the unpacked sizes in the zip directory (zipfile
    never inflates a member past its declared size) and the element count of its XML parts."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise ParseError("corrupt .docx: not a Word document (zip) package") from None
    with archive:
        members = archive.infolist()
        unpacked = sum(member.file_size for member in members)
        if unpacked > limits.expanded_bytes:
            raise ParseError(
                f".docx unpacks to {human_size(unpacked)}, which exceeds the decompressed-size limit of "
                f"{human_size(limits.expanded_bytes)} (ingest.max_expanded_mb)"
            )
        counted = 0
        try:
            for member in members:
                if member.filename.lower().endswith(_XML_PARTS):
                    with archive.open(member) as stream:
                        counted = _count_elements(stream, counted, limits.elements, ".docx")
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, zlib.error) as exc:
            raise ParseError(f"corrupt .docx: {_short(exc)}") from None


def _paragraph_styles(document: DocxDocument) -> Callable[[Paragraph], str]:
    """The style name of a paragraph, from a table built once: python-docx's `paragraph.style` scans every
    style for the default on each unstyled paragraph, which made a 10,000-paragraph file take a minute."""
    from docx.enum.style import WD_STYLE_TYPE

    names = {s.style_id: s.name or "" for s in document.styles if s.type == WD_STYLE_TYPE.PARAGRAPH}
    default = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
    default_name = (default.name if default is not None else "") or ""
    return lambda paragraph: names.get(paragraph._p.style or "", default_name)


def _is_heading(style_name: str) -> bool:
    return style_name == "Title" or re.fullmatch(r"Heading \d", style_name) is not None


@_register(".docx")
def parse_docx(source: str, data: bytes, *, limits: ParseLimits = DEFAULT_LIMITS) -> Document:
    """Paragraphs and table rows in document order; Title / Heading N paragraphs start sections."""
    _check_docx_package(data, limits)
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    slug, blocks, first_heading = _Slugger(), _Blocks(), None
    try:
        document = docx.Document(io.BytesIO(data))
        style_of = _paragraph_styles(document)
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                for row in item.rows:
                    cells = list(dict.fromkeys(row.cells))  # merged cells repeat the same cell
                    blocks.add(" | ".join(c.text.strip() for c in cells if c.text.strip()), tight=True)
            elif _is_heading(style_of(item)) and item.text.strip():
                name = _inline(item.text)
                blocks.heading(name, slug(name))
                first_heading = first_heading or name
            else:
                blocks.add(item.text.strip())
        title = (document.core_properties.title or "").strip() or first_heading
    except (PackageNotFoundError, zipfile.BadZipFile):
        raise ParseError("corrupt .docx: not a Word document (zip) package") from None
    except MemoryError:
        raise
    except Exception as exc:  # python-docx surfaces zip, XML and key errors on damaged files
        raise ParseError(f"corrupt .docx: {_short(exc)}") from None
    return _document(source, "docx", blocks, title=title)


# --- tables and JSON ----------------------------------------------------------------------------


@_register(".csv", ".tsv")
def parse_csv(source: str, data: bytes) -> Document:
    """Each row becomes "column: value; ..." so a row retrieved alone still says what its values mean."""
    text, warns = decode_text(data)
    _require_text(text)
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab
    if not source.lower().endswith(".tsv"):
        try:
            dialect = csv.Sniffer().sniff("\n".join(text.split("\n", 50)[:50]), delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    lines: list[str] = []
    try:
        header = next((row for row in reader if any(v.strip() for v in row)), [])
        columns = [name.strip() or f"column {i}" for i, name in enumerate(header, 1)]
        for row in reader:
            names = columns + [f"column {i}" for i in range(len(columns) + 1, len(row) + 1)]
            pairs = [f"{n}: {_SPACES.sub(' ', v).strip()}" for n, v in zip(names, row) if v.strip()]
            if pairs:
                lines.append("; ".join(pairs))
    except csv.Error as exc:
        raise ParseError(f"invalid CSV: line {reader.line_num}: {exc}") from None
    if not lines:
        raise ParseError("no data rows")
    body = "\n".join(lines)
    return Document(
        source, "csv", body, _cut(body, []), metadata={"rows": len(lines), "columns": columns}, warnings=warns
    )


def _flatten(value: Any, path: str = "") -> Iterator[str]:
    """`{"a": {"b": [1]}}` -> "a.b[0]: 1"; nulls say nothing, so they are skipped."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{path}[{i}]")
    elif value is not None:
        shown = json.dumps(value) if isinstance(value, bool) else str(value)
        yield f"{path}: {shown}" if path else shown


@_register(".json")
def parse_json(source: str, data: bytes) -> Document:
    """Flattened to "path: value" lines, so each fact carries its own context when retrieved."""
    text, warns = decode_text(data)
    _require_text(text)
    try:
        body = "\n".join(_flatten(json.loads(text)))
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ParseError("invalid JSON: nested too deeply") from None
    _require_text(body, "no text found")
    return Document(source, "json", body, _cut(body, []), warnings=warns)


_MAX_LINE_WARNINGS = 5


@_register(".jsonl", ".ndjson")
def parse_jsonl(source: str, data: bytes) -> Document:
    """One record per line; bad lines are skipped with a warning rather than losing the whole file."""
    text, warns = decode_text(data)
    _require_text(text)
    records: list[str] = []
    bad: list[int] = []
    first_error = ""
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = "\n".join(_flatten(json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as exc:
            bad.append(number)
            first_error = first_error or f"line {number}: {getattr(exc, 'msg', 'nested too deeply')}"
            continue
        if record.strip():
            records.append(record)
    if not records and bad:
        raise ParseError(f"invalid JSON Lines: none of the {len(bad)} lines is valid JSON ({first_error})")
    if not records:
        raise ParseError("no text found")
    warns += [f"line {n}: invalid JSON, skipped" for n in bad[:_MAX_LINE_WARNINGS]]
    if len(bad) > _MAX_LINE_WARNINGS:
        warns.append(f"{len(bad) - _MAX_LINE_WARNINGS} more invalid lines skipped")
    body = "\n\n".join(records)
    return Document(source, "jsonl", body, _cut(body, []), metadata={"records": len(records)}, warnings=warns)


# --- dispatch -----------------------------------------------------------------------------------


def unsupported(suffix: str) -> str:
    """The reason given for a file no parser reads."""
    return f"{UNSUPPORTED} '{suffix}'" if suffix else f"{UNSUPPORTED} (no extension)"


def parse_document(source: str, data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> Document:
    """Parse here, in this process, with the parser registered for the source's suffix.

    Any parser failure becomes a ParseError (a parser bug costs one file, not the run); MemoryError is
    let through, so the sandbox can say the file hit the memory limit.
    """
    suffix = PurePath(source).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        raise ParseError(unsupported(suffix))
    if not data:
        raise ParseError("empty file")
    try:
        if suffix in LIMITED:
            return parser(source, data, limits=limits)  # type: ignore[call-arg]
        return parser(source, data)
    except (ParseError, MemoryError):
        raise
    except RecursionError:
        raise ParseError("too deeply nested to parse") from None
    except Exception as exc:
        raise ParseError(f"could not parse: {type(exc).__name__}: {exc}") from exc
