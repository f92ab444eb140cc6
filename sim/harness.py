"""The cocotb side of a simulated board: clocks the SoC model and serves bus requests
from the host over an inherited Unix socket until the host closes it.

The socket is read in a ``bridge`` thread, which parks the simulator while it waits
(no simulated time passes, no CPU is used); each request runs in the simulator as a
``resume`` coroutine. Bulk transfers go through the SoC's burst master (``burst_*``
ports): Python touches the model once per ``depth`` words. ``RAW_*`` requests drive
the ``wb_*`` port one clock at a time instead, as a baseline and a cross-check. A
``BATCH`` of requests runs in one ``resume``, in order, until one fails.

Run by the simulator (``COCOTB_TEST_MODULES=sim.harness``); ``FPGALAB_SIM_FD`` names
the socket's file descriptor.
"""

from __future__ import annotations

import ctypes
import os
import socket
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, RisingEdge

from fpgalab.sim.protocol import (
    BATCHABLE,
    REPLY,
    REQUEST,
    Command,
    Status,
    is_write,
    pack_replies,
    recv_exactly,
    unpack_batch,
)

WORD_MASK = (1 << 30) - 1
#: The burst master's narrow ports the host drives or reads (``burst_<name>``).
BURST_PORTS = ("we", "adr", "length", "req", "count", "err", "timed_out", "rlast", "wword")

#: status, words done, byte address of the failed access, data read
Result = tuple[int, int, int, bytes]


#: cocotb's deposit (``cocotb.handle._GPISetAction.DEPOSIT``), for the raw handles below.
DEPOSIT = 0
#: VPI's ``vpiVectorVal`` value format and ``vpiNoDelay`` write (``vpi_user.h``).
VPI_VECTOR_VAL = 9
VPI_NO_DELAY = 1


class _VpiValue(ctypes.Structure):
    """VPI's ``s_vpi_value``: a format, then a union whose widest member is 8 bytes."""

    _fields_ = [("format", ctypes.c_int32), ("vector", ctypes.c_void_p)]


class WidePort:
    """A port of ``words`` 32-bit words, read and written whole in VPI's vector format,
    which Verilator copies a word at a time. (cocotb's binary strings cost a C call per
    bit: 8,192 of them, tens of microseconds, most of what a short burst takes.) Word 0
    is the least significant; the VPI functions are the simulator's own."""

    def __init__(self, path: str, words: int) -> None:
        vpi = ctypes.CDLL(None)  # the simulator executable, which exports VPI to cocotb
        self._get, self._put = vpi.vpi_get_value, vpi.vpi_put_value
        self._get.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VpiValue)]
        self._get.restype = None
        self._put.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VpiValue), ctypes.c_void_p,
                              ctypes.c_int32]  # fmt: skip
        self._put.restype = ctypes.c_void_p
        by_name = vpi.vpi_handle_by_name
        by_name.argtypes, by_name.restype = [ctypes.c_char_p, ctypes.c_void_p], ctypes.c_void_p
        self._handle = by_name(path.encode(), None)
        if not self._handle:
            raise RuntimeError(f"VPI has no signal {path}")
        self.words = words
        #: (aval, bval) pairs: the value written; words past a write keep what they held
        self._out = (ctypes.c_uint32 * (2 * words))()
        self._avals = memoryview(self._out).cast("B").cast("I")[::2]
        self._value = _VpiValue(VPI_VECTOR_VAL, ctypes.addressof(self._out))
        self._read = _VpiValue(VPI_VECTOR_VAL, None)

    def read_top(self, count: int) -> bytes:
        """The top ``count`` words, least significant first, as little-endian bytes."""
        self._get(self._handle, ctypes.byref(self._read))
        assert self._read.vector is not None
        pairs = ctypes.string_at(self._read.vector, 8 * self.words)
        return memoryview(pairs).cast("I")[2 * (self.words - count) :: 2].tobytes()

    def write_low(self, data: bytes) -> None:
        """Deposit ``data`` (little-endian words) into the lowest words."""
        self._avals[: len(data) // 4] = memoryview(data).cast("I")
        self._put(self._handle, ctypes.byref(self._value), None, VPI_NO_DELAY)


class Board:
    def __init__(self, dut: Any) -> None:
        self.dut = dut
        self.depth = len(dut.burst_rdata) // 32
        self.toggle = 0
        # The burst ports' own simulator handles: cocotb's ``.value`` makes an object per
        # access, a large share of a short burst's time. Writes are deposits, as ``.value =``
        # makes them (the toolchain has cocotb trust inertial writes).
        port = {name: getattr(dut, f"burst_{name}")._handle for name in BURST_PORTS}
        self.we, self.adr, self.length, self.req = (port[n] for n in ("we", "adr", "length", "req"))
        self.count, self.err, self.timed_out = (port[n] for n in ("count", "err", "timed_out"))
        self.rlast, self.wword = port["rlast"], port["wword"]
        self.wdata = WidePort(f"{dut._path}.burst_wdata", self.depth)
        self.rdata = WidePort(f"{dut._path}.burst_rdata", self.depth)
        self.done = dut.burst_done.value_change
        #: What ``we`` and ``length`` hold now (None: not written yet): only changes are written.
        self.held: dict[str, int | None] = {"we": None, "length": None}

    async def start(self) -> None:
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        for name in ("wb_cyc", "wb_stb", "wb_we", "burst_req", "burst_we"):
            getattr(dut, name).value = 0
        dut.wb_sel.value = 0xF
        dut.wb_cti.value = 0
        dut.wb_bte.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)

    def _hold(self, name: str, handle: Any, value: int) -> None:
        if self.held[name] != value:
            handle.set_signal_val_int(DEPOSIT, value)
            self.held[name] = value

    # Burst master -----------------------------------------------------------------------------

    async def burst(self, op: int, address: int, count: int, payload: bytes) -> Result:
        depth = self.depth
        word = address >> 2
        write = op == Command.WRITE
        self._hold("we", self.we, int(write))
        data = bytearray()
        for first in range(0, count, depth):
            n = min(depth, count - first)
            self.adr.set_signal_val_int(DEPOSIT, (word + first) & WORD_MASK)
            self._hold("length", self.length, n)
            if write and n == 1:  # a narrow write: the wide port costs ~15 us a copy
                # the simulator takes a C int: the word as a signed 32-bit value
                word32 = int.from_bytes(payload[4 * first : 4 * first + 4], "little", signed=True)
                self.wword.set_signal_val_int(DEPOSIT, word32)
            elif write:
                self.wdata.write_low(payload[4 * first : 4 * (first + n)])
            self.toggle ^= 1
            self.req.set_signal_val_int(DEPOSIT, self.toggle)
            await self.done
            done = self.count.get_signal_val_long()
            if not write and done == 1:  # a narrow read: the wide port costs ~15 us a copy
                data += (self.rlast.get_signal_val_long() & 0xFFFF_FFFF).to_bytes(4, "little")
            elif not write and done:
                data += self.rdata.read_top(done)  # word i of done sits at depth - done + i
            if self.err.get_signal_val_long():
                timed_out = self.timed_out.get_signal_val_long()
                status = Status.TIMEOUT if timed_out else Status.BUS_ERROR
                failed = first + done
                return status, failed, (address + 4 * failed) & 0xFFFF_FFFF, bytes(data)
        return Status.OK, count, 0, bytes(data)

    # Per-clock master (the wb_* port) ---------------------------------------------------------

    async def raw(self, op: int, address: int, count: int, payload: bytes) -> Result:
        dut = self.dut
        clk = dut.clk
        write = op == Command.RAW_WRITE
        words = memoryview(payload).cast("I") if write else None
        data = bytearray()
        dut.wb_we.value = int(write)
        dut.wb_cyc.value = 1
        dut.wb_stb.value = 1
        status, done, failed_at = Status.OK, count, 0
        for i in range(count):
            dut.wb_adr.value = ((address >> 2) + i) & WORD_MASK
            if words is not None:
                dut.wb_dat_w.value = words[i]
            while True:
                await RisingEdge(clk)
                # Just after the edge we read what the bus held before it: ack there
                # means the access completed on this edge, and dat_r is its data.
                if int(dut.wb_ack.value) or int(dut.wb_err.value):
                    break
            if int(dut.wb_err.value) or int(dut.bus_timeout.value):
                status = Status.BUS_ERROR if int(dut.wb_err.value) else Status.TIMEOUT
                done, failed_at = i, (address + 4 * i) & 0xFFFF_FFFF
                break
            if not write:
                data += int(dut.wb_dat_r.value).to_bytes(4, "little")
        dut.wb_cyc.value = 0
        dut.wb_stb.value = 0
        await RisingEdge(clk)
        return status, done, failed_at, bytes(data)


@cocotb.test()
async def serve(dut: Any) -> None:
    """Serve the host until it hangs up."""
    sock = socket.socket(fileno=int(os.environ["FPGALAB_SIM_FD"]))
    board = Board(dut)
    await board.start()

    async def one(op: int, address: int, count: int, payload: bytes) -> Result:
        if op not in BATCHABLE or address % 4:
            return Status.BAD_REQUEST, 0, address, b""
        if op in (Command.WRITE, Command.READ):
            return await board.burst(op, address, count, payload)
        return await board.raw(op, address, count, payload)

    @resume
    async def handle(op: int, address: int, count: int, payload: bytes) -> Result:
        return await one(op, address, count, payload)

    @resume
    async def handle_batch(requests: list[tuple[int, int, int, bytes]]) -> list[Result]:
        results = []
        for request in requests:
            results.append(await one(*request))
            if results[-1][0] != Status.OK:
                break
        return results

    @bridge
    def loop() -> None:
        sock.sendall(REPLY.pack(Status.OK, 0, 0, board.depth, 0))
        while True:
            header = recv_exactly(sock, REQUEST.size)
            if header is None:
                return
            op, _, _, address, count = REQUEST.unpack(header)
            payload = b""
            if is_write(op) or op == Command.BATCH:
                # a batch's address field is the size of the requests that follow
                got = recv_exactly(sock, address if op == Command.BATCH else 4 * count)
                if got is None:
                    return
                payload = got
            if op == Command.QUIT:
                sock.sendall(REPLY.pack(Status.OK, 0, 0, 0, 0))
                return
            if op == Command.BATCH:
                requests = unpack_batch(payload, count)
                if requests is None:
                    sock.sendall(REPLY.pack(Status.BAD_REQUEST, 0, 0, 0, 0))
                    continue
                sock.sendall(pack_replies(handle_batch(requests)))
                continue
            status, done, failed_at, data = handle(op, address, count, payload)
            sock.sendall(REPLY.pack(status, 0, 0, done, failed_at) + data)

    try:
        await loop()
    finally:
        sock.close()
