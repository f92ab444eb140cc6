"""Text that came from a design, a tool or a board, made safe to show in one line: a job's
``error`` and a board's ``health_reason`` reach terminals and browsers, where escape
sequences rewrite the screen or the clipboard and bidi controls reorder what is read.

Logs keep the bytes as written (they are the record); clients render them as untrusted
text. This is the one place that decides what a one-line message may hold.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_MESSAGE", "one_line"]

#: Characters of a one-line message at most (escapes included).
MAX_MESSAGE = 1000
#: Between the lines of a message made one line.
JOIN = " | "


def _escaped(ch: str) -> str:
    """``ch`` as it may be shown: control and format characters (escape sequences, bidi
    overrides, zero-width marks, line and paragraph separators) as ``\\xNN``/``\\uNNNN``."""
    if ch == "\t":
        return " "
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
        code = ord(ch)
        return (
            f"\\x{code:02x}"
            if code < 0x100
            else f"\\u{code:04x}"
            if code < 0x10000
            else (f"\\U{code:08x}")
        )
    return ch


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one line: its non-empty lines joined by `` | ``, every control character
    escaped, at most ``limit`` characters (cut with ``…``)."""
    lines = [line.strip() for line in text.splitlines()]
    joined = JOIN.join(line for line in lines if line)
    safe = "".join(_escaped(ch) for ch in joined)
    if len(safe) > limit:
        safe = safe[: limit - 1].rstrip() + "…"
    return safe
