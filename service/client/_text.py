"""Text that a design, its tools or a board wrote (build logs, errors), made safe to write
to a terminal: the client side's one rule for it. Such text is hostile: an escape sequence
in it could move the cursor, rewrite the screen, retitle the terminal or set the
clipboard (OSC 52), a carriage return could overwrite a line, a bidi override could
reorder what is read.

Every control or format character (C0, DEL, C1, bidi overrides, zero-width marks, line
and paragraph separators, surrogates, private-use and unassigned code points) is shown
as an escape (``\\x1b``, ``\\u202e``), as the lab writes them in a job's ``error``. A tab
is shown as the spaces it stands for.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

#: Unicode categories written as escapes: control, format, line and paragraph
#: separators, surrogates, private use, unassigned.
HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
TAB_SIZE = 8


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` as it may be written to a terminal: nothing in it is obeyed. A newline is
    escaped too: split a log into lines first."""
    if text.isprintable():  # the common line, checked at C speed
        return text
    out: list[str] = []
    column = 0
    for ch in text:
        if ch == "\t":
            spaces = TAB_SIZE - column % TAB_SIZE
            out.append(" " * spaces)
            column += spaces
            continue
        shown = _escape(ch) if unicodedata.category(ch) in HIDDEN else ch
        out.append(shown)
        column += len(shown)
    return "".join(out)
