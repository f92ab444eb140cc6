"""The wire format between a simulated board (``sim.harness``, inside the simulator)
and its host (``sim.board``): fixed little-endian headers over a Unix stream socket.

A request is ``REQUEST`` then, for writes, ``count`` 32-bit words. A reply is
``REPLY`` then, for reads, ``done`` words. The board speaks first: one HELLO reply
(``done`` = its burst depth) when it is ready.

A BATCH request carries several requests, run in order in one go (one wake-up of the
simulator, not a round trip each): ``REQUEST`` with ``count`` = how many and ``address`` =
the bytes that follow, then the requests as above, back to back. Its reply is ``REPLY``
with ``done`` = how many replies follow and ``failed_at`` = their bytes, then those
replies as above, one per request run: the first request that does not end OK ends the
batch, its reply the last.
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
    #: Several of the four above in one request, run in order until one fails.
    BATCH = 6


class Status(IntEnum):
    OK = 0
    #: A slave answered with ``err``.
    BUS_ERROR = 1
    #: No slave answered; the SoC's bus timeout did.
    TIMEOUT = 2
    BAD_REQUEST = 3


#: What a batch may hold: the bus's transfers, not another batch (nor HELLO or QUIT).
BATCHABLE = frozenset({Command.WRITE, Command.READ, Command.RAW_WRITE, Command.RAW_READ})


def is_write(command: int) -> bool:
    return command in (Command.WRITE, Command.RAW_WRITE)


def pack_batch(requests: list[tuple[int, int, int, bytes]]) -> bytes:
    """A BATCH request of (command, byte address, word count, words written) requests."""
    body = b"".join(
        REQUEST.pack(op, 0, 0, address, count) + (data if is_write(op) else b"")
        for op, address, count, data in requests
    )
    return REQUEST.pack(Command.BATCH, 0, 0, len(body), len(requests)) + body


def pack_replies(replies: list[tuple[int, int, int, bytes]]) -> bytes:
    """A BATCH reply of (status, words done, byte address of the failed word, words read)
    replies."""
    body = b"".join(REPLY.pack(status, 0, 0, done, at) + data for status, done, at, data in replies)
    return REPLY.pack(Status.OK, 0, 0, len(replies), len(body)) + body


def unpack_replies(body: bytes, commands: list[int]) -> list[tuple[int, int, int, bytes]] | None:
    """The replies in a BATCH reply's ``body``, one per command of ``commands`` (as many as
    it holds); None if they do not fill it exactly."""
    replies: list[tuple[int, int, int, bytes]] = []
    at = 0
    for op in commands:
        if at == len(body):
            break
        if at + REPLY.size > len(body):
            return None
        status, _, _, done, failed_at = REPLY.unpack_from(body, at)
        at += REPLY.size
        data = b""
        if not is_write(op):
            data = body[at : at + 4 * done]
            at += 4 * done
        replies.append((status, done, failed_at, data))
    return replies if at == len(body) else None


def unpack_batch(body: bytes, count: int) -> list[tuple[int, int, int, bytes]] | None:
    """A BATCH request's ``count`` requests from its ``body``; None if they do not fill it
    exactly (a malformed batch: nothing of it is run)."""
    requests: list[tuple[int, int, int, bytes]] = []
    at = 0
    for _ in range(count):
        if at + REQUEST.size > len(body):
            return None
        op, _, _, address, words = REQUEST.unpack_from(body, at)
        at += REQUEST.size
        data = b""
        if is_write(op):
            data = body[at : at + 4 * words]
            at += 4 * words
            if len(data) != 4 * words:
                return None
        requests.append((op, address, words, data))
    return requests if at == len(body) else None


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
