"""The programming port of a twin board: a Xilinx Virtual Cable (XVC 1.0) TCP server in
front of a JTAG TAP model of a Lattice ECP5 (LFE5U-25F), so the real openFPGALoader can
load a ``.bit`` into it (``openFPGALoader -c xvc-client --ip 127.0.0.1 --port N top.bit``).

What openFPGALoader 0.10 does for an SRAM load, as observed against this model: IDCODE
(0xE0, compared with the VERIFY_ID in the file), PRELOAD (0x1C), ISC_ENABLE (0xC6), ISC_ERASE
(0x0E), LSC_INIT_ADDRESS (0x46), LSC_BITSTREAM_BURST (0x7A) with one long Shift-DR of the
payload, LSC_READ_STATUS (0x3C: only the BSE error bits 23-25 are checked), ISC_DISABLE
(0x26: it polls LSC_CHECK_BUSY 0xF0 and wants ISC_EN=0), BYPASS, Test-Logic-Reset. It never
checks DONE: it exits 0 whatever ``on_bitstream`` returns; only with ``-v`` does its last
status dump print "Done Flag", and only when DONE is 1.

The burst carries the ``.bit`` file minus its comment header: from the 0xFF that closes
the comments (just before the 0xFF 0xFF 0xBD 0xB3 preamble) to the end of the file, each
byte MSB first. The model puts the bytes back together: ``captured == bit_payload(file)``.
(Newer openFPGALoader sources start one byte later, at the preamble itself.)

The load ends at ISC_DISABLE: ``on_bitstream`` then runs in its own thread and every DR
capture (status, busy flag...) blocks until it returns, so openFPGALoader waits for the
twin however long it takes (it is called with the payload only once the burst is
complete; an exception in it counts as False and sets FAIL in the status register).
ISC_ERASE and LSC_REFRESH make the twin unconfigured and call ``on_erase``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from enum import IntEnum, IntFlag

from fpgalab.sim.twins.peers import lab_peer

log = logging.getLogger("fpgalab.xvc")

IDCODE_LFE5U_25F = 0x41111043
#: Bytes of one XVC shift (TMS + TDI). openFPGALoader shifts the bitstream 1024 bytes
#: at a time and writes a NUL one byte past its receive buffer when a reply fills it:
#: 2 x (1024 + 8) carries a chunk per round trip and keeps every reply short of that.
VECTOR_BYTES = 2 * (1024 + 8)
#: Bytes of one bitstream burst at most: the largest ECP5 (LFE5UM5G-85F) takes ~2.3 MB
#: uncompressed; a client sending more is dropped, and the burst freed.
MAX_BURST = 8 << 20
#: Seconds a reply may wait for a client that does not read before it is dropped.
SEND_TIMEOUT = 10.0
#: Seconds between checks for a stop request while a DR capture waits for the hook.
_POLL = 0.05

_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


class Instruction(IntEnum):
    """The ECP5 IR opcodes (8 bits) the model knows; any other acts as BYPASS."""

    ISC_ENABLE = 0xC6
    ISC_DISABLE = 0x26
    ISC_ERASE = 0x0E
    LSC_REFRESH = 0x79
    LSC_INIT_ADDRESS = 0x46
    LSC_BITSTREAM_BURST = 0x7A
    LSC_READ_STATUS = 0x3C
    LSC_CHECK_BUSY = 0xF0
    READ_ID = 0xE0
    USERCODE = 0xC0
    PRELOAD = 0x1C
    BYPASS = 0xFF


class StatusBit(IntFlag):
    """Bits of the 32-bit status register (LSC_READ_STATUS) that openFPGALoader reads."""

    DONE = 1 << 8
    ISC_EN = 1 << 9
    BUSY = 1 << 12
    FAIL = 1 << 13


class TapState(IntEnum):
    TEST_LOGIC_RESET = 0
    RUN_TEST_IDLE = 1
    SELECT_DR = 2
    CAPTURE_DR = 3
    SHIFT_DR = 4
    EXIT1_DR = 5
    PAUSE_DR = 6
    EXIT2_DR = 7
    UPDATE_DR = 8
    SELECT_IR = 9
    CAPTURE_IR = 10
    SHIFT_IR = 11
    EXIT1_IR = 12
    PAUSE_IR = 13
    EXIT2_IR = 14
    UPDATE_IR = 15


_S = TapState
#: IEEE 1149.1: state -> (next on TMS=0, next on TMS=1).
_NEXT: dict[TapState, tuple[TapState, TapState]] = {
    _S.TEST_LOGIC_RESET: (_S.RUN_TEST_IDLE, _S.TEST_LOGIC_RESET),
    _S.RUN_TEST_IDLE: (_S.RUN_TEST_IDLE, _S.SELECT_DR),
    _S.SELECT_DR: (_S.CAPTURE_DR, _S.SELECT_IR),
    _S.CAPTURE_DR: (_S.SHIFT_DR, _S.EXIT1_DR),
    _S.SHIFT_DR: (_S.SHIFT_DR, _S.EXIT1_DR),
    _S.EXIT1_DR: (_S.PAUSE_DR, _S.UPDATE_DR),
    _S.PAUSE_DR: (_S.PAUSE_DR, _S.EXIT2_DR),
    _S.EXIT2_DR: (_S.SHIFT_DR, _S.UPDATE_DR),
    _S.UPDATE_DR: (_S.RUN_TEST_IDLE, _S.SELECT_DR),
    _S.SELECT_IR: (_S.CAPTURE_IR, _S.TEST_LOGIC_RESET),
    _S.CAPTURE_IR: (_S.SHIFT_IR, _S.EXIT1_IR),
    _S.SHIFT_IR: (_S.SHIFT_IR, _S.EXIT1_IR),
    _S.EXIT1_IR: (_S.PAUSE_IR, _S.UPDATE_IR),
    _S.PAUSE_IR: (_S.PAUSE_IR, _S.EXIT2_IR),
    _S.EXIT2_IR: (_S.SHIFT_IR, _S.UPDATE_IR),
    _S.UPDATE_IR: (_S.RUN_TEST_IDLE, _S.SELECT_DR),
}
_IR_BITS = 8
_IR_CAPTURE = 0b01  # the two LSBs IEEE 1149.1 asks for
_DR_BITS: dict[int, int] = {
    Instruction.READ_ID: 32,
    Instruction.USERCODE: 32,
    Instruction.LSC_READ_STATUS: 32,
    Instruction.LSC_CHECK_BUSY: 8,
    Instruction.ISC_ENABLE: 8,
    Instruction.ISC_ERASE: 8,
}


class Interrupted(Exception):
    """A DR capture waiting for ``on_bitstream`` was told to stop (client dropped)."""


class _BitSink:
    """Bits shifted MSB first, put back into bytes without Python per bit."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._acc = 0
        self._bits = 0

    def append(self, bits: int, count: int) -> None:
        self._acc |= bits << self._bits
        self._bits += count
        whole = self._bits // 8
        if whole:
            chunk = (self._acc & ((1 << (8 * whole)) - 1)).to_bytes(whole, "little")
            self.data += chunk.translate(_REVERSE)
            self._acc >>= 8 * whole
            self._bits -= 8 * whole


class Ecp5Tap:
    """The JTAG TAP of an ECP5 as far as an SRAM load goes. ``shift`` is called from one
    thread (the server's); the state properties may be read from any thread."""

    def __init__(
        self,
        on_bitstream: Callable[[bytes], bool] | None = None,
        on_erase: Callable[[], None] | None = None,
        idcode: int = IDCODE_LFE5U_25F,
        max_burst: int = MAX_BURST,
    ) -> None:
        self.on_bitstream = on_bitstream
        self.on_erase = on_erase
        self.idcode = idcode
        #: Bytes a bitstream burst may carry; more drops the burst and the client.
        self.max_burst = max_burst
        self._lock = threading.Lock()
        self._configured = False
        self._failed = False
        self._last_sha256: str | None = None
        self._hook_done = threading.Event()
        self._hook_done.set()
        self.reset()

    # ---- state seen from outside --------------------------------------------------------

    @property
    def configured(self) -> bool:
        """DONE: the last load ended and ``on_bitstream`` accepted it."""
        with self._lock:
            return self._configured

    @property
    def last_bitstream_sha256(self) -> str | None:
        """SHA-256 (hex) of the last bitstream handed to ``on_bitstream``."""
        with self._lock:
            return self._last_sha256

    @property
    def burst_bytes(self) -> int:
        """Bytes received so far by a burst in progress (0 when none is)."""
        sink = self._sink
        return len(sink.data) if sink is not None else 0

    # ---- the TAP --------------------------------------------------------------------------

    def reset(self) -> None:
        """A new cable: Test-Logic-Reset, and a burst in progress is dropped."""
        self._state = TapState.TEST_LOGIC_RESET
        self._ir = Instruction.READ_ID.value
        self._ir_reg = 0
        self._dr = 0
        self._dr_bits = 1
        self._isc_enabled = False
        self._sink: _BitSink | None = None
        self._loaded: bytes | None = None

    def shift(self, count: int, tms: bytes, tdi: bytes, stop: threading.Event) -> bytes:
        """Clock ``count`` bits (LSB first in each byte); returns TDO, sampled before each
        rising edge. Runs in Shift-DR/IR and Run-Test/Idle go in bulk."""
        t = int.from_bytes(tms, "little") & ((1 << count) - 1)
        d = int.from_bytes(tdi, "little")
        tdo = 0
        i = 0
        while i < count:
            state = self._state
            if state in (_S.SHIFT_DR, _S.SHIFT_IR, _S.RUN_TEST_IDLE):
                rest = t >> i
                run = count - i if rest == 0 else (rest & -rest).bit_length() - 1
                if state is _S.RUN_TEST_IDLE:
                    if run:
                        i += run
                        continue
                else:
                    n = min(run + 1, count - i)  # the bit with TMS=1 shifts too
                    bits = (d >> i) & ((1 << n) - 1)
                    tdo |= self._shift_bits(state is _S.SHIFT_IR, bits, n) << i
                    i += n
                    if n == run + 1:
                        self._enter(_NEXT[state][1], stop)
                    continue
            self._enter(_NEXT[state][(t >> i) & 1], stop)
            i += 1
        return tdo.to_bytes((count + 7) // 8, "little")

    def _shift_bits(self, ir: bool, bits: int, n: int) -> int:
        if ir:
            both = self._ir_reg | (bits << _IR_BITS)
            self._ir_reg = (both >> n) & ((1 << _IR_BITS) - 1)
            return both & ((1 << n) - 1)
        if self._sink is not None:
            self._sink.append(bits, n)
            if len(self._sink.data) > self.max_burst:
                # no ECP5 takes that much: drop it (and its memory) with the client
                self._sink = None
                with self._lock:
                    self._failed = True
                raise ValueError(f"a bitstream burst over {self.max_burst} bytes")
            return 0
        both = self._dr | (bits << self._dr_bits)
        self._dr = (both >> n) & ((1 << self._dr_bits) - 1)
        return both & ((1 << n) - 1)

    def _enter(self, state: TapState, stop: threading.Event) -> None:
        self._state = state
        if state is _S.TEST_LOGIC_RESET:
            self._latch(Instruction.READ_ID.value, stop)
        elif state is _S.CAPTURE_IR:
            self._ir_reg = _IR_CAPTURE
        elif state is _S.UPDATE_IR:
            self._latch(self._ir_reg, stop)
        elif state is _S.CAPTURE_DR:
            self._settle(stop)
            self._dr_bits = _DR_BITS.get(self._ir, 1)
            self._dr = self._capture()

    def _capture(self) -> int:
        if self._ir == Instruction.READ_ID:
            return self.idcode
        if self._ir == Instruction.LSC_READ_STATUS:
            with self._lock:
                status = StatusBit.DONE if self._configured else StatusBit(0)
                if self._failed:
                    status |= StatusBit.FAIL
            if self._isc_enabled:
                status |= StatusBit.ISC_EN
            return int(status)
        return 0  # busy flag clear (a running hook blocks the capture instead), BYPASS

    def _settle(self, stop: threading.Event) -> None:
        """While ``on_bitstream`` runs the device is busy: block, unless told to stop."""
        while not self._hook_done.wait(_POLL):
            if stop.is_set():
                raise Interrupted("stopped while the twin was still taking its bitstream")

    def _latch(self, ir: int, stop: threading.Event) -> None:
        if self._ir == Instruction.LSC_BITSTREAM_BURST and self._sink is not None:
            self._loaded = bytes(self._sink.data)
            self._sink = None
        if ir != self._ir:
            log.debug("IR 0x%02X", ir)
        self._ir = ir
        if ir == Instruction.ISC_ENABLE:
            self._isc_enabled = True
        elif ir in (Instruction.ISC_ERASE, Instruction.LSC_REFRESH):
            self._settle(stop)
            self._loaded = None
            self._unconfigure()
        elif ir == Instruction.LSC_BITSTREAM_BURST:
            self._sink = _BitSink()
        elif ir == Instruction.ISC_DISABLE:
            self._isc_enabled = False
            if self._loaded is not None:
                self._settle(stop)
                self._start_hook(self._loaded)
                self._loaded = None

    def _unconfigure(self) -> None:
        with self._lock:
            self._configured = False
            self._failed = False
        if self.on_erase is not None:
            self.on_erase()

    def _start_hook(self, bitstream: bytes) -> None:
        self._hook_done.clear()
        threading.Thread(
            target=self._run_hook, args=(bitstream,), name="xvc-on-bitstream", daemon=True
        ).start()

    def _run_hook(self, bitstream: bytes) -> None:
        digest = hashlib.sha256(bitstream).hexdigest()
        failed = False
        try:
            ok = self.on_bitstream(bitstream) if self.on_bitstream is not None else True
        except Exception:
            log.exception("on_bitstream failed for a %d-byte bitstream", len(bitstream))
            ok, failed = False, True
        with self._lock:
            self._configured = bool(ok)
            self._failed = failed
            self._last_sha256 = digest
        self._hook_done.set()


class XVCServer:
    """Serves one XVC client at a time on ``host:port`` (0: a free port) from a thread, in
    front of ``tap`` (by default an ``Ecp5Tap`` calling ``on_bitstream``/``on_erase``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        on_bitstream: Callable[[bytes], bool] | None = None,
        on_erase: Callable[[], None] | None = None,
        tap: Ecp5Tap | None = None,
        vector_bytes: int = VECTOR_BYTES,
    ) -> None:
        self.tap = tap if tap is not None else Ecp5Tap(on_bitstream, on_erase)
        self.host = host
        self.vector_bytes = vector_bytes
        self._listener = socket.create_server((host, port))
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = threading.Event()
        self._drop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="xvc-server", daemon=True)
        self._buf = bytearray()

    @property
    def configured(self) -> bool:
        return self.tap.configured

    @property
    def last_bitstream_sha256(self) -> str | None:
        return self.tap.last_bitstream_sha256

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> XVCServer:
        self._thread.start()
        return self

    def disconnect(self) -> None:
        """Drop the current client (if any); keep listening for the next."""
        self._drop.set()
        self._wake()

    def close(self) -> None:
        """Stop serving: drop the client, stop listening, join the thread."""
        self._closing.set()
        self._drop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> XVCServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _readable(self, sock: socket.socket) -> bool:
        """Block until ``sock`` is readable (True) or a drop/close was asked (False)."""
        while True:
            ready, _, _ = select.select([sock, self._wake_r], [], [])
            if self._wake_r in ready:
                self._wake_r.recv(64)
            if self._drop.is_set() or self._closing.is_set():
                return False
            if sock in ready:
                return True

    def _serve(self) -> None:
        while not self._closing.is_set():
            self._drop.clear()
            if not self._readable(self._listener):
                continue
            conn, peer = self._listener.accept()
            if not lab_peer(conn):
                log.warning("XVC client %s:%d refused: not the lab's user", *peer[:2])
                conn.close()
                continue
            log.info("XVC client %s:%d", *peer[:2])
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(SEND_TIMEOUT)  # reads wait in select(), never here
                self._buf.clear()
                self.tap.reset()
                try:
                    self._serve_client(conn)
                except (OSError, Interrupted) as e:
                    log.info("XVC client gone: %s", e)
                except ValueError as e:
                    log.warning("XVC protocol error, dropping the client: %s", e)

    def _serve_client(self, conn: socket.socket) -> None:
        while True:
            cmd = self._recv_command(conn)
            if cmd == b"getinfo:":
                conn.sendall(b"xvcServer_v1.0:%d\n" % self.vector_bytes)
            elif cmd == b"settck:":
                conn.sendall(self._recv_exact(conn, 4))  # any period will do
            elif cmd == b"shift:":
                (count,) = struct.unpack("<I", self._recv_exact(conn, 4))
                size = (count + 7) // 8
                if 2 * size > self.vector_bytes:
                    raise ValueError(
                        f"a {count}-bit shift is over the {self.vector_bytes}-byte limit"
                    )
                vectors = self._recv_exact(conn, 2 * size)
                conn.sendall(self.tap.shift(count, vectors[:size], vectors[size:], self._drop))
            else:
                raise ValueError(f"unknown XVC command {cmd!r}")

    def _recv_command(self, conn: socket.socket) -> bytes:
        while (end := self._buf.find(b":", 0, 8)) < 0:
            if len(self._buf) >= 8:
                raise ValueError(f"no XVC command in {bytes(self._buf[:8])!r}")
            self._fill(conn)
        cmd = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return cmd

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill(conn)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _fill(self, conn: socket.socket) -> None:
        if not self._readable(conn):
            raise ConnectionAbortedError("dropped by the server")
        # openFPGALoader sends each command in two writes with Nagle on: a delayed ACK
        # from us would hold the second back by 40 ms, on every round trip.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionResetError("the client closed the connection")
        self._buf += chunk
