"""Compression bombs and other files that cost too much to parse: refused or stopped with their reason,
in the sandbox's worker process, while this process (the ingest, or `ragapp serve`) stays small and alive.

Every bomb is built here, small on disk: a .docx whose document.xml unpacks to hundreds of MB or to
millions of elements, and a PDF whose pages all share one big FlateDecode content stream.
"""

from __future__ import annotations

import io
import os
import re
import resource
import signal
import threading
import time
import zipfile
import zlib
from pathlib import Path

import docx
import pytest
from ragapp.connectors import sandbox
from ragapp.connectors.base import MB, ParseError, ParseLimits
from ragapp.connectors.filesystem import parse

from tests.pdf_files import assemble_pdf

W_NS = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
PARAGRAPH = b"<w:p><w:r><w:t>Some text here, number 12345</w:t></w:r></w:p>"


def docx_bomb(chunk: bytes, repeats: int) -> bytes:
    """A real python-docx package whose word/document.xml is `chunk` repeated, deflated as hard as zip can."""
    template = io.BytesIO()
    docx.Document().save(template)
    out = io.BytesIO()
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info, src.read(info.filename))
                continue
            member = zipfile.ZipInfo("word/document.xml")
            member.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(member, "w", force_zip64=True) as body:
                body.write(
                    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document ' + W_NS + b"><w:body>"
                )
                block = chunk * 1000
                for _ in range(repeats // 1000):
                    body.write(block)
                body.write(chunk * (repeats % 1000) + b"</w:body></w:document>")
    return out.getvalue()


def pdf_bomb(pages: int, stream_bytes: int) -> bytes:
    """Every page's /Contents is the same FlateDecode stream of `stream_bytes` text operators."""
    operator = b"BT /F1 12 Tf 72 720 Td (A) Tj ET\n"
    content = zlib.compress(operator * (stream_bytes // len(operator)), 9)
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>",
    ]
    objects += [b"<< /Type /Page /Parent 2 0 R /Resources 4 0 R /Contents 3 0 R >>"] * pages
    return assemble_pdf(objects)


def parent_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def refused(path: Path, data: bytes, limits: ParseLimits | None = None) -> str:
    """The reason a bomb is refused; the test process's own peak memory must not move (parsing is elsewhere)."""
    before = parent_peak_mb()
    with pytest.raises(ParseError) as caught:
        parse(path, data) if limits is None else parse(path, data, limits)
    assert parent_peak_mb() - before < 60, "the bomb was parsed in this process"
    return str(caught.value)


def test_docx_that_unpacks_past_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    bomb = docx_bomb(b"<w:p/>", 40_000_000)  # 240 MB of XML
    assert len(bomb) < 400_000
    started = time.monotonic()
    reason = refused(tmp_path / "bomb.docx", bomb)
    assert re.fullmatch(
        r"\.docx unpacks to 240\.\d MB, which exceeds the decompressed-size limit of 200 MB \(ingest\.max_expanded_mb\)",
        reason,
    )
    assert time.monotonic() - started < 20  # read from the zip directory, nothing inflated


def test_docx_with_millions_of_elements_is_refused(tmp_path: Path) -> None:
    bomb = docx_bomb(b"<w:p/>", 2_500_000)  # 15 MB of XML: under the size limit
    reason = refused(tmp_path / "many.docx", bomb)
    assert reason == ".docx has more than 2,000,000 elements, which exceeds the element limit (ingest.max_elements)"


def test_html_with_millions_of_elements_is_refused(tmp_path: Path) -> None:
    reason = refused(tmp_path / "tags.html", b"<html><body>" + b"<b>x</b>" * 2_100_000 + b"</body></html>")
    assert reason == "HTML has more than 2,000,000 elements, which exceeds the element limit (ingest.max_elements)"


def test_pdf_whose_pages_share_one_big_stream_is_refused(tmp_path: Path) -> None:
    bomb = pdf_bomb(pages=150, stream_bytes=2_000_000)  # 300 MB of content to parse, from a 20 KB file
    assert len(bomb) < 30_000
    reason = refused(tmp_path / "shared.pdf", bomb)
    assert reason == (
        "PDF pages 1-101 unpack to 202 MB of content, which exceeds the decompressed-size limit of 200 MB "
        "(ingest.max_expanded_mb)"
    )


def test_pdf_with_one_huge_stream_stops_at_pypdfs_limit(tmp_path: Path) -> None:
    reason = refused(tmp_path / "one.pdf", pdf_bomb(pages=1, stream_bytes=100_000_000))  # 100 MB from 300 KB
    assert reason.startswith("PDF exceeds a pypdf safety limit: Limit reached while decompressing")


def test_slow_parse_is_killed_at_the_time_limit_and_the_next_file_parses(tmp_path: Path) -> None:
    slow = pdf_bomb(pages=150, stream_bytes=2_000_000)
    limits = ParseLimits(expanded_bytes=10**10, seconds=2)  # size check off: only the clock can stop it
    started = time.monotonic()
    reason = refused(tmp_path / "slow.pdf", slow, limits)
    assert reason == ("parse took longer than 2 s, the time limit (ingest.max_parse_seconds); the parser was stopped")
    assert time.monotonic() - started < 10
    assert sandbox.worker_pid() is None  # killed; the next file starts a new one
    good = pdf_bomb(pages=2, stream_bytes=100)
    assert parse(tmp_path / "good.pdf", good).text.startswith("A")
    assert sandbox.worker_pid() is not None


def test_parse_past_the_memory_cap_is_stopped_and_reported(tmp_path: Path) -> None:
    bomb = docx_bomb(PARAGRAPH, 300_000)  # 900,000 elements: under the element limit; lxml needs ~250 MB
    reason = refused(tmp_path / "big.docx", bomb, ParseLimits(memory_bytes=200 * MB))
    assert reason == (
        "parse needed more than 200 MB of memory, the memory limit (ingest.max_parse_memory_mb); the parser was stopped"
    )
    assert "Some text here" in parse(tmp_path / "ok.docx", docx_bomb(PARAGRAPH, 3)).text


def test_worker_killed_from_outside_costs_one_file(tmp_path: Path) -> None:
    """The kernel's OOM killer (played here by SIGKILL) ends the worker mid-file: that file is reported."""
    slow = pdf_bomb(pages=150, stream_bytes=2_000_000)
    parse(tmp_path / "warm.pdf", pdf_bomb(pages=1, stream_bytes=40))
    pid = sandbox.worker_pid()
    assert pid is not None
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        reason = refused(tmp_path / "slow.pdf", slow, ParseLimits(expanded_bytes=10**10, seconds=30))
    finally:
        killer.cancel()
    assert reason == (
        "the parser process was killed (SIGKILL) while parsing this file, most likely for memory; "
        "set ingest.max_parse_memory_mb below what this machine can spare"
    )
    assert parse(tmp_path / "after.pdf", pdf_bomb(pages=1, stream_bytes=40)).text == "A"


def test_the_worker_is_a_fresh_interpreter_not_a_fork(tmp_path: Path) -> None:
    """A forked child would inherit torch's threads and locks from `ragapp serve`; an exec'd one does not."""
    parse(tmp_path / "a.html", b"<p>hello</p>")
    pid = sandbox.worker_pid()
    assert pid is not None and pid != os.getpid()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"-c", sandbox._BOOT.encode()]


@pytest.mark.slow  # parsing is what is tested: on SQLite only, the store is incidental
def test_ingest_reports_each_bomb_and_ingests_the_rest(tmp_path: Path) -> None:
    """Through App.ingest, the path `ragapp serve` takes for uploads: bombs, a damaged UTF-8 file and a
    link out of the folder each get their line in the report; the good files are searchable."""
    from ragapp import App

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "zip-bomb.docx").write_bytes(docx_bomb(b"<w:p/>", 40_000_000))
    (folder / "shared-stream.pdf").write_bytes(pdf_bomb(pages=150, stream_bytes=2_000_000))
    (folder / "slow.pdf").write_bytes(pdf_bomb(pages=150, stream_bytes=900_000))  # 135 MB: under the size limit
    (folder / "good.docx").write_bytes(docx_bomb(b"<w:p><w:r><w:t>The platypus lays eggs.</w:t></w:r></w:p>", 1))
    german = "Herzliche Grüße aus München; die Kängurus springen über die Straße.\n".encode()
    (folder / "gruss.txt").write_bytes(german * 3 + b"stray \xe9 byte\n")
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("a private file next to the folder, not in it")
    (folder / "linked.txt").symlink_to(secret)

    app = App(tmp_path / "ws", config={"ingest": {"max_parse_seconds": 3}})
    report = app.ingest([folder])
    reasons = {Path(p.source).name: p.reason for p in report.problems}
    assert set(reasons) == {"zip-bomb.docx", "shared-stream.pdf", "slow.pdf", "linked.txt"}
    assert "exceeds the decompressed-size limit of 200 MB" in reasons["zip-bomb.docx"]
    assert "exceeds the decompressed-size limit of 200 MB" in reasons["shared-stream.pdf"]
    assert reasons["slow.pdf"].startswith("parse took longer than 3 s, the time limit")
    assert reasons["linked.txt"].startswith(f"symlink to a file outside the folder ({secret})")
    assert report.added == 2
    warnings = {Path(w.source).name: w.reason for w in report.warnings}
    assert warnings == {"gruss.txt": "invalid UTF-8: 1 byte replaced with U+FFFD, the rest decoded as UTF-8"}
    hit = app.search("Grüße", k=1, mode="bm25")[0]
    assert hit.source == str(folder / "gruss.txt") and "Grüße aus München" in hit.text
    assert app.search("platypus eggs", k=1)[0].source == str(folder / "good.docx")
    assert not app.search("private file next to the folder", k=5, mode="bm25")
