"""The cocotb side of a simulated board: clocks the SoC model and serves bus requests
from the host over an inherited Unix socket until the host closes it.

The socket is read in a ``bridge`` thread, which parks the simulator while it waits
(no simulated time passes, no CPU is used); each request runs in the simulator as a
``resume`` coroutine. Bulk transfers go through the SoC's burst master (``burst_*``
ports): Python touches the model once per ``depth`` words. ``RAW_*`` requests drive
the ``wb_*`` port one clock at a time instead, as a baseline and a cross-check.

Run by the simulator (``COCOTB_TEST_MODULES=sim.harness``); ``FPGALAB_SIM_FD`` names
the socket's file descriptor.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, RisingEdge, ValueChange

from fpgalab.sim.protocol import REPLY, REQUEST, Command, Status, is_write, recv_exactly

WORD_MASK = (1 << 30) - 1
#: What the harness serves besides HELLO and QUIT.
SERVED = (Command.WRITE, Command.READ, Command.RAW_WRITE, Command.RAW_READ)

#: status, words done, byte address of the failed access, data read
Result = tuple[int, int, int, bytes]


class Board:
    def __init__(self, dut: Any) -> None:
        self.dut = dut
        self.depth = len(dut.burst_rdata) // 32
        self.toggle = 0

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

    # Burst master -----------------------------------------------------------------------------

    async def burst(self, op: int, address: int, count: int, payload: bytes) -> Result:
        dut = self.dut
        depth = self.depth
        word = address >> 2
        write = op == Command.WRITE
        dut.burst_we.value = int(write)
        data = bytearray()
        rdata = dut.burst_rdata._handle  # the binary string, without a LogicArray per burst
        for first in range(0, count, depth):
            n = min(depth, count - first)
            dut.burst_adr.value = (word + first) & WORD_MASK
            dut.burst_length.value = n
            if write:
                chunk = payload[4 * first : 4 * (first + n)]
                dut.burst_wdata.value = int.from_bytes(chunk, "little")
            self.toggle ^= 1
            dut.burst_req.value = self.toggle
            await ValueChange(dut.burst_done)
            done = int(dut.burst_count.value)
            if not write and done:
                value = int(rdata.get_signal_val_binstr(), 2) >> (32 * (depth - done))
                data += value.to_bytes(4 * done, "little")
            if int(dut.burst_err.value):
                status = Status.TIMEOUT if int(dut.burst_timed_out.value) else Status.BUS_ERROR
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

    @resume
    async def handle(op: int, address: int, count: int, payload: bytes) -> Result:
        if op in (Command.WRITE, Command.READ):
            return await board.burst(op, address, count, payload)
        return await board.raw(op, address, count, payload)

    @bridge
    def loop() -> None:
        sock.sendall(REPLY.pack(Status.OK, 0, 0, board.depth, 0))
        while True:
            header = recv_exactly(sock, REQUEST.size)
            if header is None:
                return
            op, _, _, address, count = REQUEST.unpack(header)
            payload = b""
            if is_write(op):
                got = recv_exactly(sock, 4 * count)
                if got is None:
                    return
                payload = got
            if op == Command.QUIT:
                sock.sendall(REPLY.pack(Status.OK, 0, 0, 0, 0))
                return
            if op not in SERVED or address % 4:
                sock.sendall(REPLY.pack(Status.BAD_REQUEST, 0, 0, 0, address))
                continue
            status, done, failed_at, data = handle(op, address, count, payload)
            sock.sendall(REPLY.pack(status, 0, 0, done, failed_at) + data)

    try:
        await loop()
    finally:
        sock.close()
