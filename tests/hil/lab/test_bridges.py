"""The host-side bus bridges (``hil.lab.uartbone``, ``hil.lab.etherbone``) and the fault proxy
(``tests.faults``), over real sockets and a real pty, against two test doubles:

- ``FakeUARTBoneBoard``: Stream2Wishbone's framing over a dict, served over TCP or a pty;
  like the gateware it drops bytes that arrive while it owes a read reply.
- ``FakeEtherboneBoard``: a UDP server that decodes requests and encodes replies with
  LiteX's own ``litex.tools.remote.etherbone`` classes, so our framing is checked
  against an independent implementation. LiteX's ``CommUART`` checks ours the same way.

UARTBone has no checksum: a garbled reply is returned as data (see ``test_garbage``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import struct
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litex.tools.remote.etherbone import (
    EtherbonePacket,
    EtherboneReads,
    EtherboneRecord,
    EtherboneWrites,
)

from fpgalab.hil.lab import uartbone
from fpgalab.hil.lab.bridge import BridgeError, Read, Write
from fpgalab.hil.lab.etherbone import Etherbone, Record, encode
from fpgalab.hil.lab.uartbone import UARTBone, ceiling, plan, set_low_latency
from tests.faults import FaultyLink

SCRATCH = 0x0000_0004
IDENT = 0x0000_0800
SRAM = 0x0100_0000
#: Short deadlines keep the fault tests quick; no test asserts on time.
FAST = 0.3


# Test double: a UARTBone board ------------------------------------------------------------------


class FakeUARTBoneBoard:
    """A test double of a board's UARTBone gateware: frames over a dict of words (byte
    address -> word, 0 when unset). It serves one connection at a time, over TCP or a
    pty, and starts each with a fresh parser (as the gateware's 100 ms watchdog would).
    Like the gateware, it drops every byte that arrives while it owes a read reply.

    Records what it saw: ``chunks`` (each ``recv``'s bytes, i.e. the client's writes),
    ``frames`` (command, words, byte address) and ``dropped`` (bytes lost by the rule).
    """

    def __init__(self, memory: dict[int, int] | None = None) -> None:
        self.memory: dict[int, int] = dict(memory or {})
        self.chunks: list[bytes] = []
        self.frames: list[tuple[int, int, int]] = []
        self.dropped = 0
        self.connections = 0
        #: Seconds to wait before sending each read's reply (a slow board).
        self.reply_delay = 0.0
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._pty: tuple[int, int] | None = None
        self._wake = os.pipe()
        self._thread: threading.Thread | None = None

    # Doors ------------------------------------------------------------------------------------

    def start_tcp(self) -> FakeUARTBoneBoard:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._start(self._serve_tcp)
        return self

    def start_pty(self) -> FakeUARTBoneBoard:
        master, slave = os.openpty()
        tty.setraw(slave)  # the slave stays open here: the master never sees EIO
        self._pty = (master, slave)
        self._start(self._serve_pty)
        return self

    @property
    def url(self) -> str:
        if self._pty is not None:
            return os.ttyname(self._pty[1])
        assert self._listener is not None
        return f"socket://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def tcp_port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def send_unasked(self, data: bytes) -> None:
        """Bytes nobody asked for, on the open connection (a late or stray reply)."""
        if self._pty is not None:
            os.write(self._pty[0], data)
        else:
            assert self._conn is not None
            self._conn.sendall(data)

    def hang_up(self) -> None:
        """Close the open TCP connection (a board that went away and came back)."""
        assert self._conn is not None
        self._conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        os.write(self._wake[1], b"x")
        for sock in (self._listener, self._conn):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pty is not None:
            os.close(self._pty[0])
            os.close(self._pty[1])
        os.close(self._wake[0])
        os.close(self._wake[1])

    def _start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name="fake-uartbone", daemon=True)
        self._thread.start()

    def _serve_tcp(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            self.connections += 1

            def drain(conn: socket.socket = conn) -> int:
                conn.settimeout(0.0)
                n = 0
                with contextlib.suppress(BlockingIOError, OSError):
                    while chunk := conn.recv(65536):
                        n += len(chunk)
                conn.settimeout(None)
                return n

            with contextlib.suppress(OSError):
                self._session(functools.partial(conn.recv, 65536), conn.sendall, drain)
            conn.close()

    def _serve_pty(self) -> None:
        assert self._pty is not None
        master = self._pty[0]

        def recv() -> bytes:
            ready, _, _ = select.select([master, self._wake[0]], [], [])
            return b"" if self._wake[0] in ready else os.read(master, 65536)

        def drain() -> int:
            n = 0
            while select.select([master], [], [], 0)[0]:
                n += len(os.read(master, 65536))
            return n

        def send(data: bytes) -> None:
            while data:
                data = data[os.write(master, data) :]

        self.connections += 1
        with contextlib.suppress(OSError):
            self._session(recv, send, drain)

    # The gateware -----------------------------------------------------------------------------

    def _session(
        self, recv: Callable[[], bytes], send: Callable[[bytes], None], drain: Callable[[], int]
    ) -> None:
        buf = bytearray()
        while data := recv():
            self.chunks.append(data)
            buf += data
            while len(buf) >= 6:
                cmd, length, word_address = struct.unpack_from(">BBI", buf)
                n = length or 256
                address = 4 * word_address
                if cmd in (0x01, 0x03):
                    if len(buf) < 6 + 4 * n:
                        break
                    values = struct.unpack_from(f">{n}I", buf, 6)
                    del buf[: 6 + 4 * n]
                    self.frames.append((cmd, n, address))
                    for i, value in enumerate(values):
                        self.memory[address + (4 * i if cmd == 0x01 else 0)] = value
                elif cmd in (0x02, 0x04):
                    del buf[:6]
                    self.frames.append((cmd, n, address))
                    step = 4 if cmd == 0x02 else 0
                    reply = struct.pack(
                        f">{n}I", *(self.memory.get(address + step * i, 0) for i in range(n))
                    )
                    if self.reply_delay:
                        time.sleep(self.reply_delay)
                    # Busy replying: what came after the command is lost.
                    self.dropped += len(buf) + drain()
                    buf.clear()
                    send(reply)
                else:
                    del buf[:6]  # the gateware reads a header and ignores the command


# Test double: an Etherbone board ----------------------------------------------------------------


class FakeEtherboneBoard:
    """A test double of a LiteEth Etherbone board on UDP, decoding and encoding with
    LiteX's own packet classes. ``reply_to_source=False`` answers the board's own port
    on the requester's address, as stock LiteEth does; True answers the source port.
    Knobs: ``ignore`` (requests to leave unanswered), ``delay`` (seconds before the next
    reply). Records ``requests``: (write count, read count) of each packet's record."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, reply_to_source: bool = True
    ) -> None:
        self.memory: dict[int, int] = {}
        self.requests: list[tuple[int, int]] = []
        self.ignore = 0
        self.delay = 0.0
        self.reply_to_source = reply_to_source
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="fake-etherbone", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._closing:
            try:
                data, source = self.sock.recvfrom(65536)
            except OSError:
                return
            if not data:
                continue  # shutdown wakes recvfrom with an empty read
            ip, port = source
            packet = EtherbonePacket(32, data)
            packet.decode()
            (record,) = packet.records
            self.requests.append((record.wcount, record.rcount))
            if record.wcount:
                base = record.writes.base_addr
                for i, value in enumerate(record.writes.get_datas()):
                    self.memory[base + 4 * i] = value
            if not record.rcount:
                continue
            if self.ignore:
                self.ignore -= 1
                continue
            time.sleep(self.delay)
            self.delay = 0.0
            reply = EtherboneRecord()
            # LiteX 2024.12's EtherboneReads.decode() drops base_ret_addr: read the bytes.
            ret_address = int.from_bytes(record.reads.bytes[:4], "big")
            reply.writes = EtherboneWrites(
                base_addr=ret_address,
                datas=[self.memory.get(a, 0) for a in record.reads.get_addrs()],
            )
            out = EtherbonePacket(32)
            out.records = [reply]
            out.encode()
            with contextlib.suppress(OSError):
                self.sock.sendto(out.bytes, (ip, port if self.reply_to_source else self.port))


# Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def board() -> Iterator[FakeUARTBoneBoard]:
    fake = FakeUARTBoneBoard({IDENT + 4 * i: ord(c) for i, c in enumerate("fpgalab")})
    fake.start_tcp()
    yield fake
    fake.close()


@pytest.fixture
def link(board: FakeUARTBoneBoard) -> Iterator[FaultyLink]:
    proxy = FaultyLink("127.0.0.1", board.tcp_port)
    yield proxy
    proxy.close()


@pytest.fixture
def eb_board() -> Iterator[FakeEtherboneBoard]:
    fake = FakeEtherboneBoard()
    yield fake
    fake.close()


def sample(n: int, seed: int = 1) -> list[int]:
    return [(seed * 0x9E3779B1 + i * 0x01000193) & 0xFFFF_FFFF for i in range(n)]


# UARTBone: framing and throughput limits --------------------------------------------------------


def test_frames_on_the_wire() -> None:
    """A read is 6 header bytes (command, length, word address); a write adds its words."""
    (read,) = plan([Read(IDENT, 1)])
    assert read.payload == bytes([0x02, 0x01, 0x00, 0x00, 0x02, 0x00])
    (write,) = plan([Write(SCRATCH, [0x12345678])])
    assert write.payload == bytes([0x01, 0x01, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78])
    assert write.reply_words == 0


def test_plan_ends_an_exchange_at_each_read_frame() -> None:
    """Writes ride along with the next read frame; reads longer than the cap are split."""
    exchanges = plan([Write(SCRATCH, [1]), Read(SRAM, 600), Write(SRAM, [2, 3])], 255)
    assert [e.reply_words for e in exchanges] == [255, 255, 90, 0]
    assert exchanges[0].payload[:10] == bytes([1, 1, 0, 0, 0, 1, 0, 0, 0, 1])
    assert exchanges[0].what.startswith("write of 1 word at 0x00000004, then read of 255")


def test_ceiling() -> None:
    """Wire-only ceilings: 10 bytes per single read or write, 1026 bytes per 255 words."""
    assert ceiling(1_000_000, 1, "read") == pytest.approx(10_000)
    assert ceiling(115_200, 1, "write") == pytest.approx(1_152)
    assert ceiling(1_000_000, 255, "read") == pytest.approx(255e6 / 10_260)
    assert ceiling(115_200, 1000, "write") == pytest.approx(1000 * 11_520 / (4 * 6 + 4000))


def test_ops_refuse_bad_arguments() -> None:
    """Unaligned addresses, words over 32 bits and frames over 255 words are refused."""
    with pytest.raises(ValueError, match="0x3 is not word-aligned"):
        Read(0x3, 1)
    with pytest.raises(ValueError, match="word 1 of a write at 0x00000000 is not 32-bit"):
        Write(0, [1, 1 << 32])
    with pytest.raises(ValueError, match="run past the end of the 32-bit address space"):
        Read(0xFFFF_FFFC, 2)
    with pytest.raises(ValueError, match="max_words"):
        UARTBone("socket://127.0.0.1:1", max_words=256)


# UARTBone over TCP, against the test double -----------------------------------------------------


def test_single_read_and_write(board: FakeUARTBoneBoard) -> None:
    """A word written comes back; the identifier reads as the board holds it."""
    with UARTBone(board.url, timeout=FAST) as bridge:
        bridge.write(SCRATCH, [0xDEADBEEF])
        assert bridge.read(SCRATCH, 1) == [0xDEADBEEF]
        assert bytes(bridge.read(IDENT, 7)).decode() == "fpgalab"
        assert bridge.describe() == f"uart {board.url} @ 1000000 baud"
    assert board.dropped == 0


@pytest.mark.parametrize("max_words", [255, 100])
def test_bulk_round_trip_split_at_the_cap(board: FakeUARTBoneBoard, max_words: int) -> None:
    """1000 words go out and come back in frames of at most ``max_words``."""
    data = sample(1000)
    with UARTBone(board.url, timeout=FAST, max_words=max_words) as bridge:
        bridge.write(SRAM, data)
        assert bridge.read(SRAM, 1000) == data
    assert max(n for _, n, _ in board.frames) == max_words
    assert sum(n for cmd, n, _ in board.frames if cmd == 0x02) == 1000
    assert board.dropped == 0


def test_run_sends_write_and_read_in_one_go(board: FakeUARTBoneBoard) -> None:
    """A write and the read after it leave in one write() and cost one round trip."""
    with UARTBone(board.url, timeout=FAST) as bridge:
        bridge.read(IDENT, 1)  # connect and settle first
        board.chunks.clear()
        results = bridge.run([Write(SCRATCH, [7]), Read(SCRATCH, 1), Read(IDENT, 2)])
    assert results == [[7], [ord("f"), ord("p")]]
    write_then_read = bytes([1, 1, 0, 0, 0, 1, 0, 0, 0, 7, 2, 1, 0, 0, 0, 1])
    assert board.chunks == [write_then_read, bytes([2, 2, 0, 0, 2, 0])]
    assert board.dropped == 0


def test_the_double_drops_bytes_sent_while_it_replies(board: FakeUARTBoneBoard) -> None:
    """Anything sent after a read command, before its reply, is lost (as in the gateware)."""
    with socket.create_connection(("127.0.0.1", board.tcp_port)) as raw:
        raw.sendall(bytes([2, 1, 0, 0, 0, 1]) + bytes([1, 1, 0, 0, 0, 1, 0, 0, 0, 9]))
        assert raw.recv(4) == bytes(4)
    with UARTBone(board.url, timeout=FAST) as bridge:
        assert bridge.read(SCRATCH, 1) == [0]
    assert board.dropped == 10


def test_tcp_nodelay_is_set(board: FakeUARTBoneBoard, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's socket has TCP_NODELAY, unless asked not to (for measurements)."""
    made: list[socket.socket] = []
    real = socket.create_connection

    def spy(*args: Any, **kwargs: Any) -> socket.socket:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(socket, "create_connection", spy)
    for nodelay in (True, False):
        with UARTBone(board.url, timeout=FAST, tcp_nodelay=nodelay) as bridge:
            bridge.read(SCRATCH, 1)
            flag = made[-1].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert bool(flag) is nodelay


def test_litex_commuart_agrees(board: FakeUARTBoneBoard) -> None:
    """What LiteX's CommUART writes we read back, and the other way round."""
    from litex.tools.remote.comm_uart import CommUART

    def litex() -> contextlib.closing[Any]:  # the double serves one connection at a time
        return contextlib.closing(CommUART(board.url, baudrate=1_000_000))

    with litex() as theirs:
        theirs.write(SRAM, sample(20, seed=3))
    with UARTBone(board.url, timeout=FAST) as bridge:
        assert bridge.read(SRAM, 20) == sample(20, seed=3)
        bridge.write(SRAM + 0x100, sample(20, seed=4))
    with litex() as theirs:
        assert theirs.read(SRAM + 0x100, 20) == sample(20, seed=4)


def test_cannot_open(board: FakeUARTBoneBoard) -> None:
    """Nothing listening: BridgeError naming the URL, raised on first use."""
    port = board.tcp_port
    board.close()
    bridge = UARTBone(f"socket://127.0.0.1:{port}", timeout=FAST)
    with pytest.raises(BridgeError, match=rf"cannot open socket://127.0.0.1:{port}: .*refused"):
        bridge.read(SCRATCH, 1)


def test_unasked_bytes_are_never_an_answer(board: FakeUARTBoneBoard) -> None:
    """Bytes waiting before a request make the bridge reopen the link, not read them."""
    with UARTBone(board.url, timeout=FAST) as bridge:
        assert bridge.run([Write(SCRATCH, [0x55]), Read(SCRATCH, 1)]) == [[0x55]]
        board.send_unasked(b"\xaa\xbb\xcc\xdd")
        time.sleep(0.05)  # let them arrive
        assert bridge.read(SCRATCH, 1) == [0x55]
    assert board.connections == 2


def test_reconnects_after_an_idle_hang_up(board: FakeUARTBoneBoard) -> None:
    """A connection the board closed while idle is reopened on next use, not an error."""
    with UARTBone(board.url, timeout=FAST) as bridge:
        assert bridge.run([Write(SCRATCH, [0x77]), Read(SCRATCH, 1)]) == [[0x77]]
        board.hang_up()
        time.sleep(0.05)  # let the close arrive
        assert bridge.read(SCRATCH, 1) == [0x77]
    assert board.connections == 2


# UARTBone through the fault proxy ---------------------------------------------------------------


def test_proxy_forwards(board: FakeUARTBoneBoard, link: FaultyLink) -> None:
    """With no fault the proxy is a cable."""
    with UARTBone(link.url, timeout=FAST) as bridge:
        bridge.write(SRAM, sample(300))
        assert bridge.read(SRAM, 300) == sample(300)


def test_drop_mid_reply(board: FakeUARTBoneBoard, link: FaultyLink) -> None:
    """The link closing mid-reply is a BridgeError saying how much came; then it recovers."""
    board.memory.update({SRAM + 4 * i: v for i, v in enumerate(sample(4))})
    with UARTBone(link.url, timeout=FAST) as bridge:
        bridge.read(IDENT, 1)
        link.set_fault("drop", after=6)
        with pytest.raises(BridgeError) as caught:
            bridge.read(SRAM, 4)
        assert str(caught.value).startswith(f"{link.url} broke off: ")
        assert str(caught.value).endswith("read of 4 words at 0x01000000 got 6 of 16 bytes")
        link.set_fault("none")
        assert bridge.read(SRAM, 4) == sample(4)
    assert link.accepted == 2


def test_garbage(board: FakeUARTBoneBoard, link: FaultyLink) -> None:
    """UARTBone has no checksum: a garbled reply comes back as (wrong) data, no error."""
    with UARTBone(link.url, timeout=FAST) as bridge:
        bridge.write(SCRATCH, [0x12345678])
        link.set_fault("garbage")
        assert bridge.read(SCRATCH, 1) == [0x12345678 ^ 0x5A5A5A5A]
        link.set_fault("none")
        assert bridge.read(SCRATCH, 1) == [0x12345678]


@pytest.mark.timeout(20)
def test_short_reply_then_no_stale_bytes(board: FakeUARTBoneBoard, link: FaultyLink) -> None:
    """A reply cut short is a BridgeError at the deadline; the next read gets its own answer."""
    board.memory.update({SRAM: 0x1111_1111, SRAM + 4: 0x2222_2222, SCRATCH: 0x3333_3333})
    with UARTBone(link.url, timeout=FAST) as bridge:
        bridge.read(IDENT, 1)
        link.set_fault("short", after=6)
        with pytest.raises(BridgeError, match=r"^no reply from .* within 0\.3\d* s: read of 2 "
                           r"words at 0x01000000 got 6 of 8 bytes$"):  # fmt: skip
            bridge.read(SRAM, 2)
        link.set_fault("none")
        assert bridge.read(SCRATCH, 1) == [0x3333_3333]
        assert bridge.read(SRAM, 2) == [0x1111_1111, 0x2222_2222]


@pytest.mark.timeout(20)
def test_silent_board(board: FakeUARTBoneBoard, link: FaultyLink) -> None:
    """A silent board: writes go unnoticed (never acknowledged), reads end at the deadline."""
    with UARTBone(link.url, timeout=FAST) as bridge:
        link.set_fault("silent")
        bridge.write(SCRATCH, [1])
        with pytest.raises(BridgeError, match=r"got 0 of 4 bytes$"):
            bridge.run([Write(SCRATCH, [2]), Read(SCRATCH, 1)])
        link.set_fault("none")
        assert bridge.read(SCRATCH, 1) == [0]  # neither write reached the board


def test_proxy_closes_with_connections_open(board: FakeUARTBoneBoard) -> None:
    """Closing the proxy while a client waits for a held-back reply returns and hangs up."""
    proxy = FaultyLink("127.0.0.1", board.tcp_port)
    proxy.set_fault("short", after=1)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
        raw.sendall(bytes([2, 1, 0, 0, 0, 1]))
        assert raw.recv(4) == b"\x00"
        proxy.close()
        assert raw.recv(4) == b""
    with pytest.raises(ValueError, match="unknown fault 'flaky'"):
        proxy.set_fault("flaky")  # type: ignore[arg-type]


# UARTBone over a pty (pyserial's serial path) ---------------------------------------------------


@pytest.fixture
def pty_board() -> Iterator[FakeUARTBoneBoard]:
    fake = FakeUARTBoneBoard().start_pty()
    yield fake
    fake.close()


def test_pty_round_trip(pty_board: FakeUARTBoneBoard) -> None:
    """A device path opens through pyserial and carries reads and writes."""
    with UARTBone(pty_board.url, baudrate=115_200, timeout=FAST) as bridge:
        bridge.write(SRAM, sample(600))
        assert bridge.read(SRAM, 600) == sample(600)
    assert pty_board.dropped == 0


@pytest.mark.timeout(20)
def test_pty_late_reply_is_discarded(pty_board: FakeUARTBoneBoard) -> None:
    """A reply later than the deadline (within the gateware's 100 ms watchdog) is thrown
    away when the port reopens, and the next read gets its own answer."""
    pty_board.memory.update({SCRATCH: 0xAAAA_AAAA, SRAM: 0xBBBB_BBBB})
    with UARTBone(pty_board.url, timeout=FAST) as bridge:
        bridge.read(SCRATCH, 1)
        pty_board.reply_delay, bridge.timeout = 0.08, 0.02
        with pytest.raises(BridgeError, match=r"^no reply from /dev/pts/\d+ within"):
            bridge.read(SCRATCH, 1)
        pty_board.reply_delay, bridge.timeout = 0.0, FAST
        assert bridge.read(SRAM, 1) == [0xBBBB_BBBB]


def test_low_latency_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The FTDI latency timer is set to 1 ms; when it cannot be, a warning names the file."""
    monkeypatch.setattr(uartbone, "USB_SERIAL_SYSFS", tmp_path)
    timer = tmp_path / "ttyUSB7" / "latency_timer"
    timer.parent.mkdir()
    timer.write_text("16\n")
    assert set_low_latency("/dev/ttyUSB7")
    assert timer.read_text() == "1\n"
    assert set_low_latency("/dev/ttyUSB3")  # no such adapter: nothing to do

    timer.write_text("16\n")
    real_write = Path.write_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> int:
        if self == timer:
            raise PermissionError(13, "Permission denied")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refuse)
    with caplog.at_level(logging.WARNING, logger="fpgalab.uartbone"):
        assert not set_low_latency("/dev/ttyUSB7")
    (warning,) = caplog.records
    assert str(timer) in warning.getMessage()
    assert "udev rule" in warning.getMessage()


# Etherbone --------------------------------------------------------------------------------------


def test_etherbone_packet_matches_litex() -> None:
    """Our packet for a write-then-read record is byte for byte LiteX's."""
    ours = encode(Record(0x1000, [0x11223344], [0x800, 0x804]), ret_address=0xABCD)
    record = EtherboneRecord()
    record.writes = EtherboneWrites(base_addr=0x1000, datas=[0x11223344])
    record.reads = EtherboneReads(base_ret_addr=0xABCD, addrs=[0x800, 0x804])
    packet = EtherbonePacket()
    packet.records = [record]
    packet.encode()
    assert ours == bytes(packet.bytes)


@pytest.mark.parametrize("max_words", [255, 100])
def test_etherbone_bulk(eb_board: FakeEtherboneBoard, max_words: int) -> None:
    """1000 words go out and come back in records of at most ``max_words``."""
    data = sample(1000)
    with Etherbone(eb_board.host, eb_board.port, timeout=FAST, max_words=max_words,
                   local_port=0) as bridge:  # fmt: skip
        bridge.write(SRAM, data)
        assert bridge.read(SRAM, 1000) == data
        assert bridge.read(SRAM + 8, 1) == [data[2]]
    assert max(w + r for w, r in eb_board.requests) == max_words
    assert sum(r for _, r in eb_board.requests) == 1001


def test_etherbone_run_is_one_packet(eb_board: FakeEtherboneBoard) -> None:
    """A write and the reads after it share one packet and one round trip."""
    eb_board.memory[IDENT] = 0x66
    with Etherbone(eb_board.host, eb_board.port, timeout=FAST, local_port=0) as bridge:
        results = bridge.run([Write(SCRATCH, [5, 6]), Read(SCRATCH, 2), Read(IDENT, 1)])
    assert results == [[5, 6], [0x66]]
    assert eb_board.requests == [(2, 3)]


@pytest.mark.timeout(20)
def test_etherbone_timeout_then_stale_reply(eb_board: FakeEtherboneBoard) -> None:
    """An unanswered read fails at its deadline; a late reply to it is discarded later."""
    eb_board.memory.update({SCRATCH: 0xAAAA, SRAM: 0xBBBB})
    with Etherbone(eb_board.host, eb_board.port, timeout=FAST, local_port=0) as bridge:
        eb_board.ignore = 1
        with pytest.raises(BridgeError, match=r"^no reply from etherbone udp://127.0.0.1:\d+ "
                           r"within 0.3 s: read of 1 word at 0x00000004$"):  # fmt: skip
            bridge.read(SCRATCH, 1)
        eb_board.delay = 1.5 * FAST  # answers after this read gave up, during the next
        with pytest.raises(BridgeError):
            bridge.read(SCRATCH, 1)
        bridge.timeout = 2.0
        assert bridge.read(SRAM, 1) == [0xBBBB]  # the reply for SCRATCH came first
        assert bridge.discarded == 1


def test_etherbone_stock_boards_share_the_host_port() -> None:
    """Boards that answer their own port (stock LiteEth) share it on the host, each
    bridge hearing only its board."""
    first = FakeEtherboneBoard("127.0.0.2", reply_to_source=False)
    second = FakeEtherboneBoard("127.0.0.3", first.port, reply_to_source=False)
    first.memory[IDENT], second.memory[IDENT] = 2, 3
    try:
        with (
            Etherbone(first.host, first.port, timeout=FAST) as a,
            Etherbone(second.host, second.port, timeout=FAST) as b,
        ):
            for _ in range(3):
                assert (a.read(IDENT, 1), b.read(IDENT, 1)) == ([2], [3])
            assert a.discarded == b.discarded == 0
    finally:
        first.close()
        second.close()


def test_etherbone_refused() -> None:
    """Nothing on the board's port: a BridgeError saying so, not a wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        Etherbone("127.0.0.1", port, timeout=FAST, local_port=0) as bridge,
        pytest.raises(BridgeError, match="nothing listens on that UDP port"),
    ):
        bridge.read(SCRATCH, 1)


def test_etherbone_will_not_talk_to_itself(eb_board: FakeEtherboneBoard) -> None:
    """A board at this host's own address and port would be the bridge's own socket."""
    with (
        Etherbone("127.0.0.1", eb_board.port, timeout=FAST) as bridge,
        pytest.raises(BridgeError, match="this socket itself"),
    ):
        bridge.read(SCRATCH, 1)
