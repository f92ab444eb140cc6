"""Etherbone over UDP, the host side: LiteX's packet format (as LiteEth's gateware speaks
it), one request in flight, a deadline on each, and replies matched to their request.

A packet is an 8-byte header (magic 0x4e6f, version 1, 32-bit addresses and data) and
one record (LiteEth takes one per packet): a 4-byte record header (flags, byte enable,
write count, read count), then for writes the base byte address and the words, then for
reads a *return address* and each word's byte address. The board answers reads only,
with a write record whose base address is the return address: we put a request number
there, so a late reply to an abandoned request is recognised and discarded. Writes come
before reads in a record: a write and the read of an error counter share one packet.

A record carries at most ``max_words`` words in all, and the board's Etherbone
``buffer_depth`` must be at least that (a longer record hangs LiteEth); 255 words keep a
packet in one Ethernet frame.

Which local port: stock LiteEth (up to at least its 2024.12 release; liteeth issue #214)
sends every reply to *its own* UDP port on the host, not to the request's source port.
So by default we bind that same port, with ``SO_REUSEADDR``, and ``connect()`` the
socket to the board: Linux then hands each socket only its own board's datagrams, and
boards at different addresses share the port (LiteX's ``CommUDP`` binds it exclusively:
a second board on the host then fails). ``local_port=0`` binds an ephemeral port, for
servers that answer the source port.
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from fpgalab.hil.lab.bridge import (
    MAX_FRAME_WORDS,
    BridgeError,
    Read,
    Transfers,
    Write,
    check_max_words,
    words,
)

__all__ = ["Etherbone", "Record", "decode_reply", "encode", "plan"]

log = logging.getLogger("fpgalab.etherbone")

MAGIC = 0x4E6F
#: magic, version << 4 (no probe flags), addr_size << 4 | port_size (4 bytes each), pad
PACKET_HEADER = struct.Struct(">HBB4x")
_VERSION_FLAGS = 0x10
_SIZES = 0x44
#: flags, byte enable, write count, read count
RECORD_HEADER = struct.Struct(">BBBB")
_ALL_BYTES = 0x0F


@dataclass
class Record:
    """One request: writes from ``write_address`` on, then reads of ``read_addresses``."""

    write_address: int = 0
    write_data: list[int] = field(default_factory=list)
    read_addresses: list[int] = field(default_factory=list)
    #: (index of the run's Read, words of it in this record), in order.
    slots: list[tuple[int, int]] = field(default_factory=list)
    what: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.write_data) + len(self.read_addresses)

    def describe(self) -> str:
        return ", then ".join(self.what)


def encode(record: Record, ret_address: int) -> bytes:
    """The packet for ``record``; its reply will carry ``ret_address``."""
    wcount, rcount = len(record.write_data), len(record.read_addresses)
    out = bytearray(PACKET_HEADER.pack(MAGIC, _VERSION_FLAGS, _SIZES))
    out += RECORD_HEADER.pack(0, _ALL_BYTES, wcount, rcount)
    if wcount:
        out += struct.pack(f">I{wcount}I", record.write_address, *record.write_data)
    if rcount:
        out += struct.pack(f">I{rcount}I", ret_address, *record.read_addresses)
    return bytes(out)


def decode_reply(packet: bytes) -> tuple[int, list[int]] | None:
    """A read reply's (return address, words), or None if ``packet`` is not one."""
    head = PACKET_HEADER.size + RECORD_HEADER.size
    if len(packet) < head + 4:
        return None
    magic, _, _ = PACKET_HEADER.unpack_from(packet)
    _, _, wcount, rcount = RECORD_HEADER.unpack_from(packet, PACKET_HEADER.size)
    if magic != MAGIC or rcount or not wcount or len(packet) < head + 4 + 4 * wcount:
        return None
    ret_address, *data = struct.unpack_from(f">I{wcount}I", packet, head)
    return ret_address, data


def plan(ops: Sequence[Read | Write], max_words: int = MAX_FRAME_WORDS) -> list[Record]:
    """Records of at most ``max_words`` words: a record's writes are one incrementing
    run and come before its reads; any reads share a record."""
    records = [Record()]
    reads = 0
    for op in ops:
        if isinstance(op, Write):
            done = 0
            while done < len(op.data):
                rec = records[-1]
                address = op.address + 4 * done
                follows = rec.write_address + 4 * len(rec.write_data) == address
                if rec.read_addresses or rec.size >= max_words or (rec.write_data and not follows):
                    rec = Record()
                    records.append(rec)
                if not rec.write_data:
                    rec.write_address = address
                n = min(len(op.data) - done, max_words - rec.size)
                rec.write_data += op.data[done : done + n]
                rec.what.append(f"write of {words(n)} at 0x{address:08x}")
                done += n
            continue
        done = 0
        while done < op.count:
            rec = records[-1]
            if rec.size >= max_words:
                rec = Record()
                records.append(rec)
            n = min(op.count - done, max_words - rec.size)
            address = op.address + 4 * done
            rec.read_addresses += range(address, address + 4 * n, 4)
            rec.slots.append((reads, n))
            rec.what.append(f"read of {words(n)} at 0x{address:08x}")
            done += n
        reads += 1
    return [rec for rec in records if rec.size]


class Etherbone(Transfers):
    """A board's bus over Etherbone/UDP. Implements ``hil.lab.bridge.Bridge``; one caller at
    a time. ``timeout`` is each request's deadline; requests are not retried (a read may
    have side effects, and a retried record would repeat its writes).

    ``local_port``: None binds ``port`` (stock LiteEth answers there; see the module
    docstring), 0 an ephemeral port, anything else that port.
    """

    def __init__(
        self,
        host: str,
        port: int = 1234,
        timeout: float = 1.0,
        max_words: int = MAX_FRAME_WORDS,
        *,
        local_port: int | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_words = check_max_words(max_words)
        self.local_port = port if local_port is None else local_port
        self._sock: socket.socket | None = None
        # Random start: a new bridge never takes a reply meant for an earlier one.
        self._next_id = secrets.randbits(32)
        #: Replies discarded because they answered no request in flight (for tests, stats).
        self.discarded = 0

    # Bridge -----------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"etherbone udp://{self.host}:{self.port}"

    def run(self, ops: Sequence[Read | Write]) -> list[list[int]]:
        results: list[list[int]] = [[] for op in ops if isinstance(op, Read)]
        records = plan(ops, self.max_words)
        for i, record in enumerate(records):
            where = f" (request {i + 1} of {len(records)})" if len(records) > 1 else ""
            data = self._request(record, where)
            for index, n in record.slots:
                results[index] += data[:n]
                data = data[n:]
        return results

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Etherbone:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # One request ------------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                if self.local_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("", self.local_port))
                sock.connect((self.host, self.port))
                if sock.getsockname() == sock.getpeername():
                    raise OSError("that is this socket itself: choose another local_port")
            except OSError as exc:
                sock.close()
                raise BridgeError(
                    f"cannot open {self.describe()} from local port {self.local_port}: "
                    f"{exc.strerror or exc}"
                ) from None
            self._sock = sock
        return self._sock

    def _drain(self, sock: socket.socket) -> None:
        sock.settimeout(0.0)
        while True:
            try:
                sock.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                return
            self.discarded += 1

    def _request(self, record: Record, where: str) -> list[int]:
        sock = self._socket()
        ret_address = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF_FFFF
        what = f"{record.describe()}{where}"
        try:
            self._drain(sock)
            sock.send(encode(record, ret_address))
        except OSError as exc:
            self.close()
            raise BridgeError(f"cannot send to {self.describe()}: {what}: {exc}") from None
        expected = len(record.read_addresses)
        if not expected:
            return []
        deadline = time.monotonic() + self.timeout
        stale = 0
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                packet = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                self.close()
                raise BridgeError(
                    f"{self.describe()} refused {what}: nothing listens on that UDP port"
                ) from None
            except OSError as exc:
                self.close()
                raise BridgeError(f"{self.describe()}: {what}: {exc}") from None
            reply = decode_reply(packet)
            if reply is not None and reply[0] == ret_address and len(reply[1]) == expected:
                return reply[1]
            stale += 1
            self.discarded += 1
            log.debug("%s: discarded a datagram that does not answer %s", self.describe(), what)
        note = f" ({stale} other datagrams discarded)" if stale else ""
        raise BridgeError(
            f"no reply from {self.describe()} within {self.timeout:.3g} s: {what}{note}"
        )
