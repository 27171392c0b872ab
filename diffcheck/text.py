"""Text from a case file, made safe to print: no terminal escape sequence, forged line or bidi trick gets through."""

from __future__ import annotations

import re

# C0 controls (except what ``keep`` allows), DEL, C1 controls, bidi embeddings/overrides/isolates and marks,
# and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    ch = match.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def safe(text, newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``, ``\\u202e``).

    ``newlines=True`` keeps line feeds, for multi-line messages that diffcheck itself formats; everything else,
    carriage returns included, is escaped.
    """
    text = str(text)
    if newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)


def clip(text, limit: int = 80) -> str:
    """Echoed input, escaped and cut to ``limit`` characters (a 1,000,000-character key is not printed whole)."""
    text = safe(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
