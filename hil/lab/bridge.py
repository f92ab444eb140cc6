"""What every host-to-board bus bridge offers (``hil.lab.uartbone``, ``hil.lab.etherbone``): 32-bit
Wishbone reads and writes at byte addresses, several of them batched into as few round
trips as the wire protocol allows, and the one error type a bridge raises.

Error hierarchy::

    BridgeError          the board did not answer in time, answered short, or the link
                         could not be opened or broke; the bridge has dropped the link
                         and reopens it on next use
    ValueError           a malformed request (unaligned address, word out of range):
                         a caller's bug, nothing was sent

Neither bridge reports bus errors: a LiteX SoC answers a read that timed out on its bus
with 0xFFFFFFFF and counts the error in a register the caller may read back.

Thread-safety: a bridge serves one caller at a time (the hardware backend serialises
calls per board); calls from several threads at once must be serialised by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from fpgalab.hil.gateware.bus import span_problem

__all__ = [
    "MAX_FRAME_WORDS",
    "Bridge",
    "BridgeError",
    "Read",
    "Write",
    "check_max_words",
    "chunks",
    "words",
]

#: Neither UARTBone (a 1-byte length) nor an Etherbone record (1-byte counts) moves more
#: words than this at once.
MAX_FRAME_WORDS = 255
_WORD_LIMIT = 1 << 32


class BridgeError(Exception):
    """The board did not answer as it should; the message is one line saying what was
    asked and what came back."""


def _check_span(address: int, count: int) -> None:
    if problem := span_problem(address, count):
        raise ValueError(problem)


@dataclass(frozen=True)
class Read:
    """Read ``count`` 32-bit words from byte ``address`` on, incrementing."""

    address: int
    count: int = 1

    def __post_init__(self) -> None:
        _check_span(self.address, self.count)

    def describe(self) -> str:
        return f"read of {words(self.count)} at 0x{self.address:08x}"


@dataclass(frozen=True)
class Write:
    """Write ``data`` (32-bit words) from byte ``address`` on, incrementing."""

    address: int
    data: Sequence[int]

    def __post_init__(self) -> None:
        data = tuple(self.data)
        _check_span(self.address, len(data))
        for i, word in enumerate(data):
            if not 0 <= word < _WORD_LIMIT:
                raise ValueError(f"word {i} of a write at 0x{self.address:08x} is not 32-bit")
        object.__setattr__(self, "data", data)  # stored as a tuple: frozen all the way

    def describe(self) -> str:
        return f"write of {words(len(self.data))} at 0x{self.address:08x}"


class Bridge(Protocol):
    """A board's Wishbone bus as the host sees it. One caller at a time."""

    def read(self, address: int, count: int) -> list[int]:
        """``count`` words from byte ``address`` on."""
        ...

    def write(self, address: int, data: Sequence[int]) -> None:
        """Write ``data`` from byte ``address`` on. Neither protocol acknowledges writes:
        a return means the bytes left the host, not that the board did the write."""
        ...

    def run(self, ops: Sequence[Read | Write]) -> list[list[int]]:
        """Do ``ops`` in order in as few round trips as the protocol allows; each Read's
        words, in order."""
        ...

    def close(self) -> None:
        """Drop the link; the next call opens it again."""
        ...

    def describe(self) -> str:
        """One line for messages, e.g. ``uart socket://127.0.0.1:4001 @ 1000000 baud``."""
        ...


class Transfers:
    """``read`` and ``write`` in terms of ``run``, for bridges to inherit."""

    def run(self, ops: Sequence[Read | Write]) -> list[list[int]]:
        raise NotImplementedError

    def read(self, address: int, count: int) -> list[int]:
        return self.run([Read(address, count)])[0]

    def write(self, address: int, data: Sequence[int]) -> None:
        self.run([Write(address, data)])


def words(count: int) -> str:
    """``1 word``, ``4 words``: for messages."""
    return f"{count} word" if count == 1 else f"{count} words"


def check_max_words(max_words: int) -> int:
    if not 1 <= max_words <= MAX_FRAME_WORDS:
        raise ValueError(f"max_words must be 1..{MAX_FRAME_WORDS}, not {max_words}")
    return max_words


def chunks(address: int, count: int, max_words: int) -> Iterator[tuple[int, int, int]]:
    """Split ``count`` words from byte ``address`` into pieces of at most ``max_words``:
    (byte address, offset of the piece's first word, words in it)."""
    for offset in range(0, count, max_words):
        yield address + 4 * offset, offset, min(max_words, count - offset)
