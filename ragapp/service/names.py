"""Names that people read: file and collection names, key notes. Invisible characters are refused.

A right-to-left override (U+202E) makes `report<U+202E>gpj.md` display as "reportdm.jpg"; a byte-order
mark or a zero-width space makes two names that look the same differ. Such a name can only mislead whoever reads
a listing, so it is refused with the character spelled out.
"""

from __future__ import annotations

import unicodedata

# Unicode general categories that display as nothing (or move other text): control characters, format
# characters (bidi overrides and isolates, BOM, zero-width space/joiners, soft hyphen...), line and
# paragraph separators, and lone surrogates (from undecodable bytes).
INVISIBLE = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "an unpaired surrogate",
}


def invisible_character(name: str) -> str | None:
    """What is wrong with `name` ("contains U+202E RIGHT-TO-LEFT OVERRIDE, an invisible ..."), or None."""
    for c in name:
        kind = INVISIBLE.get(unicodedata.category(c))
        if kind is not None:
            label = unicodedata.name(c, "")
            return f"contains U+{ord(c):04X}{' ' + label if label else ''}, {kind}"
    return None
