"""UARTBone, the host side: LiteX's ``Stream2Wishbone`` framing over a serial port (any
pyserial URL or device path) or TCP (``socket://host:port``, e.g. a twin), with a
deadline on every exchange, which LiteX's ``CommUART`` does not have.

The wire (host to board): command (0x01 write, 0x02 read, incrementing), length in words
(1 byte), the *word* address (4 bytes), then for writes ``length`` words; all big-endian.
Board to host: only reads are answered, with ``length`` words. Writes are never
acknowledged and bus errors never reported (a bus timeout reads as 0xFFFFFFFF).

The gateware ignores input while it is busy with a read (a UART PHY has no buffer), so an
*exchange* is: any number of write frames and at most one read frame, sent in one
``write()``, then the whole reply before anything else is sent. On a timeout, a short
reply or a broken link the bridge raises ``BridgeError`` and drops the link. Reopening it
waits until the line has been quiet longer than the gateware's 100 ms frame watchdog,
so the late bytes of an abandoned reply are discarded, not taken for the next answer.

``socket://`` uses a plain socket of ours, not pyserial's: pyserial's socket handler
gives no way to set ``TCP_NODELAY`` (its socket is private), has a fixed 5 s connect
timeout, and sleeps 0.3 s in every ``close()``, which a reconnect after a fault pays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import serial  # type: ignore[import-untyped]

from fpgalab.hil.lab.bridge import (
    MAX_FRAME_WORDS,
    BridgeError,
    Read,
    Transfers,
    Write,
    check_max_words,
    chunks,
    words,
)

__all__ = ["UARTBone", "ceiling", "plan", "set_low_latency", "wire_time"]

log = logging.getLogger("fpgalab.uartbone")

CMD_WRITE_INCR = 0x01
CMD_READ_INCR = 0x02
#: command, length in words, word address
HEADER = struct.Struct(">BBI")
#: A start bit, 8 data bits, a stop bit.
BITS_PER_BYTE = 10
#: A deadline allows the wire time of an exchange's bytes this many times over.
WIRE_MARGIN = 2.0
#: Stream2Wishbone resets a frame still in progress after 100 ms; a quiet line for longer
#: than this (plus USB latency) means no byte of an old exchange is still coming.
SETTLE_QUIET = 0.15
#: pyserial's read timeout: the grain of a serial link's deadlines.
_SERIAL_POLL = 0.02
_SEND_CHUNK = 4096

#: Linux's view of USB serial adapters (the FTDI latency timer among their settings).
USB_SERIAL_SYSFS = Path("/sys/bus/usb-serial/devices")
UDEV_RULE = 'ACTION=="add", SUBSYSTEM=="usb-serial", DRIVER=="ftdi_sio", ATTR{latency_timer}="1"'


def wire_time(nbytes: int, baudrate: int) -> float:
    """Seconds ``nbytes`` take on a UART at ``baudrate`` (10 bits a byte)."""
    return nbytes * BITS_PER_BYTE / baudrate


def ceiling(
    baudrate: int, words: int, op: Literal["read", "write"], max_words: int = MAX_FRAME_WORDS
) -> float:
    """The most words per second UARTBone can move in transfers of ``words`` words, from
    the bytes on the wire alone (no USB or bus latency). A frame carries 6 header bytes
    and 4 per word. Reads wait for their reply (a round trip per frame, header then
    words); writes stream (header and words one way). Both come to the same bytes per
    word; a read's ceiling is also its round trips per second times ``words``."""
    if words < 1:
        raise ValueError("a transfer moves at least one word")
    if op not in ("read", "write"):
        raise ValueError(f"op must be 'read' or 'write', not {op!r}")
    frames = -(-words // check_max_words(max_words))
    nbytes = frames * HEADER.size + 4 * words
    return words / wire_time(nbytes, baudrate)


# The plan: ops to exchanges -----------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """Bytes sent in one go and the reply awaited before anything else is sent."""

    payload: bytes
    reply_words: int
    #: What was asked, for messages.
    what: str
    #: Which Read of the run the reply's words belong to (None: writes only).
    result: int | None


def _writes_text(writes: list[Write]) -> str:
    if len(writes) <= 2:
        return " and ".join(w.describe() for w in writes)
    return f"{len(writes)} writes of {words(sum(len(w.data) for w in writes))}"


def plan(ops: Sequence[Read | Write], max_words: int = MAX_FRAME_WORDS) -> list[Exchange]:
    """Frames of at most ``max_words``; each read frame ends an exchange, carrying the
    write frames before it."""
    exchanges: list[Exchange] = []
    payload = bytearray()
    writes: list[Write] = []
    reads = 0
    for op in ops:
        if isinstance(op, Write):
            for address, offset, n in chunks(op.address, len(op.data), max_words):
                payload += HEADER.pack(CMD_WRITE_INCR, n, address >> 2)
                payload += struct.pack(f">{n}I", *op.data[offset : offset + n])
            writes.append(op)
            continue
        for address, _, n in chunks(op.address, op.count, max_words):
            payload += HEADER.pack(CMD_READ_INCR, n, address >> 2)
            what = f"read of {words(n)} at 0x{address:08x}"
            if writes:
                what = f"{_writes_text(writes)}, then {what}"
            exchanges.append(Exchange(bytes(payload), n, what, reads))
            payload, writes = bytearray(), []
        reads += 1
    if payload:
        exchanges.append(Exchange(bytes(payload), 0, _writes_text(writes), None))
    return exchanges


# Links: a TCP socket or a pyserial port -----------------------------------------------------------


class _LinkClosed(Exception):
    def __init__(self, received: bytes, reason: str) -> None:
        super().__init__(reason)
        self.received = received
        self.reason = reason


class _Link(Protocol):
    def send(self, data: bytes, deadline: float) -> None: ...

    def receive(self, size: int, deadline: float) -> bytes:
        """``size`` bytes, or fewer if the deadline passed; ``_LinkClosed`` if it broke."""
        ...

    def pending(self) -> bytes:
        """Whatever has arrived, without waiting."""
        ...

    def close(self) -> None: ...


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


class _TcpLink:
    def __init__(self, host: str, port: int, timeout: float, nodelay: bool) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        if nodelay:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes, deadline: float) -> None:
        self._sock.settimeout(max(_left(deadline), 1e-3))
        self._sock.sendall(data)

    def receive(self, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            left = _left(deadline)
            if left <= 0:
                break
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(size - len(buf))
            except TimeoutError:
                break
            except OSError as exc:
                raise _LinkClosed(bytes(buf), exc.strerror or str(exc)) from None
            if not chunk:
                raise _LinkClosed(bytes(buf), "the connection was closed by the other end")
            buf += chunk
        return bytes(buf)

    def pending(self) -> bytes:
        self._sock.settimeout(0.0)
        buf = bytearray()
        while True:
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                return bytes(buf)
            except OSError as exc:
                raise _LinkClosed(bytes(buf), exc.strerror or str(exc)) from None
            if not chunk:
                raise _LinkClosed(bytes(buf), "the connection was closed by the other end")
            buf += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class _SerialLink:
    def __init__(self, url: str, baudrate: int, timeout: float) -> None:
        device = "://" not in url
        port: Any = serial.serial_for_url(
            url,
            baudrate=baudrate,
            timeout=_SERIAL_POLL,
            write_timeout=timeout + WIRE_MARGIN * wire_time(_SEND_CHUNK, baudrate),
            do_not_open=True,
            **({"exclusive": True} if device else {}),
        )
        port.open()
        self._port = port
        if device:
            set_low_latency(url, port)
        port.reset_input_buffer()

    def send(self, data: bytes, deadline: float) -> None:
        for start in range(0, len(data), _SEND_CHUNK):
            if start and _left(deadline) <= 0:
                raise TimeoutError(f"sent {start} of {len(data)} bytes before the deadline")
            try:
                self._port.write(data[start : start + _SEND_CHUNK])
            except serial.SerialTimeoutException:
                raise TimeoutError(f"sent at most {start} of {len(data)} bytes") from None
            except serial.SerialException as exc:
                raise OSError(str(exc)) from None

    def receive(self, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size and _left(deadline) > 0:
            try:
                buf += bytes(self._port.read(size - len(buf)))
            except (serial.SerialException, OSError) as exc:
                raise _LinkClosed(bytes(buf), str(exc)) from None
        return bytes(buf)

    def pending(self) -> bytes:
        try:
            waiting = int(self._port.in_waiting)
            return bytes(self._port.read(waiting)) if waiting else b""
        except (serial.SerialException, OSError) as exc:
            raise _LinkClosed(b"", str(exc)) from None

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("closing a serial port: %s", exc)


def set_low_latency(device: str, port: Any = None) -> bool:
    """Ask for low latency on a USB serial adapter: FTDI chips hold received bytes for
    up to 16 ms by default (about 62 reads/s). False, with a warning naming the file,
    if its latency timer stays above 1 ms; True otherwise (also when there is none)."""
    if port is not None:
        try:
            port.set_low_latency_mode(True)
        except (AttributeError, NotImplementedError, ValueError, OSError) as exc:
            log.debug("%s: no ASYNC_LOW_LATENCY: %s", device, exc)
    timer = USB_SERIAL_SYSFS / Path(os.path.realpath(device)).name / "latency_timer"
    try:
        current = int(timer.read_text().strip())
    except (OSError, ValueError):
        return True  # not a USB serial adapter with a latency timer
    if current <= 1:
        return True
    try:
        timer.write_text("1\n")
    except OSError as exc:
        log.warning(
            "%s: the FTDI latency timer (%s) is %d ms and cannot be set to 1 (%s): every "
            "read may wait %d ms, about %d reads/s. Install the udev rule %s, or run: "
            "echo 1 > %s",
            device, timer, current, exc.strerror or exc, current, 1000 // current,
            UDEV_RULE, timer,
        )  # fmt: skip
        return False
    return True


# The bridge ---------------------------------------------------------------------------------------


class UARTBone(Transfers):
    """A board's bus over UARTBone. Implements ``hil.lab.bridge.Bridge``; one caller at a time.

    ``url``: a device path (``/dev/ttyUSB0``), any pyserial URL (``rfc2217://``,
    ``loop://``), or ``socket://host:port``. The link opens on first use. ``timeout`` is
    each exchange's base deadline; the wire time of its bytes at ``baudrate`` is added
    twice over. ``tcp_nodelay=False`` only exists to measure what Nagle's algorithm costs.
    """

    def __init__(
        self,
        url: str,
        baudrate: int = 1_000_000,
        timeout: float = 1.0,
        max_words: int = MAX_FRAME_WORDS,
        *,
        tcp_nodelay: bool = True,
    ) -> None:
        if baudrate <= 0 or timeout <= 0:
            raise ValueError(f"baudrate and timeout must be positive, not {baudrate}, {timeout}")
        self.url = url
        self.baudrate = baudrate
        self.timeout = timeout
        self.max_words = check_max_words(max_words)
        self.tcp_nodelay = tcp_nodelay
        self._tcp: tuple[str, int] | None = None
        if url.startswith("socket://"):
            parts = urlsplit(url)
            if not parts.hostname or parts.port is None or parts.path or parts.query:
                raise ValueError(f"expected socket://HOST:PORT, not {url!r}")
            self._tcp = (parts.hostname, parts.port)
        self._link: _Link | None = None

    # Bridge -----------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"uart {self.url} @ {self.baudrate} baud"

    def run(self, ops: Sequence[Read | Write]) -> list[list[int]]:
        results: list[list[int]] = [[] for op in ops if isinstance(op, Read)]
        exchanges = plan(ops, self.max_words)
        for i, exchange in enumerate(exchanges):
            where = f" (round trip {i + 1} of {len(exchanges)})" if len(exchanges) > 1 else ""
            reply = self._exchange(exchange, where)
            if exchange.result is not None:
                results[exchange.result] += struct.unpack(f">{exchange.reply_words}I", reply)
        return results

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def __enter__(self) -> UARTBone:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # One exchange -----------------------------------------------------------------------------

    def _exchange(self, exchange: Exchange, where: str) -> bytes:
        try:
            return self._exchange_once(exchange, where)
        except BaseException:
            self.close()  # half an exchange leaves the link in an unknown state
            raise

    def _exchange_once(self, exchange: Exchange, where: str) -> bytes:
        link = self._ready_link()
        expected = 4 * exchange.reply_words
        budget = self.timeout + WIRE_MARGIN * wire_time(
            len(exchange.payload) + expected, self.baudrate
        )
        deadline = time.monotonic() + budget
        try:
            link.send(exchange.payload, deadline)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise BridgeError(
                f"cannot send to {self.url}: {exchange.what}{where}: {reason}"
            ) from None
        if not expected:
            return b""
        try:
            reply = link.receive(expected, deadline)
        except _LinkClosed as exc:
            raise BridgeError(
                f"{self.url} broke off: {exc.reason}: {exchange.what}{where} "
                f"got {len(exc.received)} of {expected} bytes"
            ) from None
        if len(reply) < expected:
            raise BridgeError(
                f"no reply from {self.url} within {budget:.3g} s: {exchange.what}{where} "
                f"got {len(reply)} of {expected} bytes"
            )
        return reply

    def _ready_link(self) -> _Link:
        """The open link, with nothing unread on it."""
        if self._link is not None:
            try:
                stale = self._link.pending()
            except _LinkClosed as exc:
                log.info("%s: the link went down while idle (%s): reopening", self.url, exc)
                self.close()
            else:
                if stale:
                    log.warning(
                        "%s: %d unexpected bytes waiting before a request: reopening",
                        self.url, len(stale),
                    )  # fmt: skip
                    self.close()
        if self._link is None:
            link = self._open()
            try:
                self._settle(link)
            except BaseException:
                link.close()
                raise
            self._link = link
        return self._link

    def _open(self) -> _Link:
        try:
            if self._tcp is not None:
                return _TcpLink(*self._tcp, timeout=self.timeout, nodelay=self.tcp_nodelay)
            return _SerialLink(self.url, self.baudrate, self.timeout)
        except (OSError, serial.SerialException, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise BridgeError(f"cannot open {self.url}: {reason}") from None

    def _settle(self, link: _Link) -> None:
        """Discard input until the line has been quiet for ``SETTLE_QUIET``."""
        start = time.monotonic()
        limit = start + self.timeout + 4 * SETTLE_QUIET
        discarded = 0
        while True:
            try:
                got = link.receive(1 << 16, min(time.monotonic() + SETTLE_QUIET, limit))
            except _LinkClosed as exc:
                raise BridgeError(f"cannot open {self.url}: {exc.reason}") from None
            if not got:
                break
            discarded += len(got)
            if time.monotonic() >= limit:
                raise BridgeError(
                    f"{self.url} never goes quiet: {discarded} unexpected bytes in "
                    f"{time.monotonic() - start:.2g} s after opening it"
                )
        if discarded:
            log.warning("%s: discarded %d stale bytes after opening", self.url, discarded)
