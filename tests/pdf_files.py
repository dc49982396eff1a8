"""PDF files written by hand for the parser tests, so the reader under test never reads its own writer's output."""

from __future__ import annotations


def assemble_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF 1.4 file of `objects` (numbered from 1; object 1 is the catalog) with its xref table.

    `trailer`: more trailer entries, e.g. b"/Info 4 0 R"."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\n" % (len(objects) + 1, trailer + b" " if trailer else b"")
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)
