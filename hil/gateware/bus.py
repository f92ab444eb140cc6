"""The SoC's bus as a host sees it, in one place for every layer: 32-bit words at byte
addresses of a 32-bit space, the two operations on them, and how a host reads the
identifier and tries the scratch register that every SoC of the lab has
(``config.IDENTIFIER``, ``config.SCRATCH``).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from fpgalab.hil.gateware.config import IDENT_PREFIX

__all__ = ["ADDRESS_SPACE", "IDENT_WORDS", "Op", "decode_ident", "ident_problem",
           "scratch_pattern", "scratch_problem", "span_problem"]  # fmt: skip

#: Bytes a bus address reaches: a 32-bit space.
ADDRESS_SPACE = 1 << 32
#: Bytes of one word.
WORD_BYTES = 4
#: Words of the identifier a host reads (one character each, NUL-terminated).
IDENT_WORDS = 64
#: XORed into what the scratch register holds: what a host writes there to try it.
SCRATCH_FLIP = 0xA5A5_5A5A


class Op(IntEnum):
    """What a run does on the bus (the API's ``op``)."""

    #: Write ``data`` to consecutive words.
    WRITE = 1
    #: Read ``length`` consecutive words.
    READ = 2


def span_problem(address: int, count: int) -> str | None:
    """Why ``count`` words from byte ``address`` are not a transfer the bus can take
    (unaligned, negative, past the 32-bit space), or None."""
    if address % WORD_BYTES:
        return f"{address:#x} is not word-aligned (a multiple of {WORD_BYTES})"
    if count < 0:
        return f"{count} words cannot be moved"
    if address < 0 or address + WORD_BYTES * count > ADDRESS_SPACE:
        return f"{count} words at {address:#x} run past the end of the 32-bit address space"
    return None


def decode_ident(words: Sequence[int]) -> str:
    """The identifier from its words: one character in the low byte of each, up to NUL."""
    chars = bytearray()
    for word in words:
        if word & 0xFF == 0:
            break
        chars.append(word & 0xFF)
    return chars.decode("ascii", "replace")


def ident_problem(ident: str, expected: str | None = None) -> str:
    """'' if ``ident`` is a lab SoC's (the one ``expected``, if given); else what it is."""
    if expected is not None and ident == expected:
        return ""
    if not ident.startswith(IDENT_PREFIX):
        return f"runs an unknown SoC ({ident!r})"
    if expected is not None:
        return f"runs another SoC ({ident!r}), not {expected!r}"
    return ""


def scratch_pattern(before: int) -> int:
    """What to write to the scratch register that holds ``before``: every bit changes
    where ``SCRATCH_FLIP`` has one, so a stuck bus cannot pass for a working one."""
    return SCRATCH_FLIP ^ before


def scratch_problem(pattern: int, after: Sequence[int]) -> str:
    """'' if the scratch register read back ``pattern``; else what it read."""
    if list(after) == [pattern]:
        return ""
    return f"scratch read back {list(after)} after writing {pattern:#x}"
