"""The wire format between a simulated board (``sim.harness``, inside the simulator)
and its host (``sim.board``): fixed little-endian headers over a Unix stream socket.

A request is ``REQUEST`` then, for writes, ``count`` 32-bit words. A reply is
``REPLY`` then, for reads, ``done`` words. The board speaks first: one HELLO reply
(``done`` = its burst depth) when it is ready.
"""

from __future__ import annotations

import socket
import struct
from enum import IntEnum

from fpgalab.hil.gateware.bus import Op

#: op, pad, pad, byte address, word count
REQUEST = struct.Struct("<BBHII")
#: status, pad, pad, words done (HELLO: the burst depth), byte address of the failed word
REPLY = struct.Struct("<BBHII")


class Command(IntEnum):
    """What a request asks the simulated board: the bus's two operations (their values
    are ``Op``'s, the one definition), the same one clock at a time, and the wire's own."""

    HELLO = 0
    #: Through the burst master: bulk, no Python per clock.
    WRITE = Op.WRITE.value
    READ = Op.READ.value
    #: Through the ``wb_*`` port, one cocotb ``await`` per clock (a baseline, a cross-check).
    RAW_WRITE = 3
    RAW_READ = 4
    QUIT = 5


class Status(IntEnum):
    OK = 0
    #: A slave answered with ``err``.
    BUS_ERROR = 1
    #: No slave answered; the SoC's bus timeout did.
    TIMEOUT = 2
    BAD_REQUEST = 3


def is_write(command: int) -> bool:
    return command in (Command.WRITE, Command.RAW_WRITE)


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None if the peer closed the connection first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            return None
        got += n
    return bytes(buf)
