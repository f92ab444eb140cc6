"""The cocotb side of a twin: clocks the SoC's real UARTBone gateware and feeds its UART
byte stream (``serial_rx_*``) from an inherited socket, a byte per clock at most,
sending back every byte the SoC puts out (``serial_tx_*``).

Like ``sim.harness``, the socket is read in a ``bridge`` thread that parks the simulator
while no bytes come (no simulated time passes, no CPU is used). After each chunk the
clock runs until the gateware waits for input again with nothing to send: then every
reply byte it owes has been sent. The simulator says it is ready with one 0x00 byte;
everything after that is the UART.

Run by the simulator (``COCOTB_TEST_MODULES=sim.twin_harness``); ``FPGALAB_SIM_FD``
names the socket's file descriptor.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, RisingEdge

HELLO = b"\x00"


class StreamFeeder:
    def __init__(self, dut: Any) -> None:
        self.dut = dut
        self.rx_data = dut.serial_rx_data
        self.rx_valid = dut.serial_rx_valid
        self.rx_ready = dut.serial_rx_ready
        self.tx_data = dut.serial_tx_data
        self.tx_valid = dut.serial_tx_valid
        self.rx_idle = dut.serial_rx_idle

    async def start(self) -> None:
        dut = self.dut
        # 40 ns: 25 MHz, the real board's clock (only simulated time depends on it).
        Clock(dut.clk, 40, unit="ns").start()
        self.rx_valid.value = 0
        self.rx_data.value = 0
        dut.serial_tx_ready.value = 1
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)

    async def feed(self, data: bytes) -> bytes:
        """Offer ``data`` a byte at a time; what the SoC sent until it went quiet."""
        clk = self.dut.clk
        out = bytearray()
        i, n = 0, len(data)
        offering = False
        while True:
            if i < n:
                self.rx_data.value = data[i]
                if not offering:
                    self.rx_valid.value = 1
                    offering = True
            elif offering:
                self.rx_valid.value = 0
                offering = False
            await RisingEdge(clk)
            # Just after the edge we see what held during the cycle before it.
            sending = int(self.tx_valid.value)
            if sending:  # tx_ready is always 1: the byte went out on this edge
                out.append(int(self.tx_data.value))
            if offering:
                if int(self.rx_ready.value):  # taken on this edge
                    i += 1
            elif not sending and int(self.rx_idle.value):
                # Nothing offered, nothing sent, every byte consumed and the bridge
                # waiting for more: quiet.
                return bytes(out)


@cocotb.test()
async def serve(dut: Any) -> None:
    """Feed the UART from the host until it hangs up."""
    sock = socket.socket(fileno=int(os.environ["FPGALAB_SIM_FD"]))
    feeder = StreamFeeder(dut)
    await feeder.start()

    @resume
    async def feed(data: bytes) -> bytes:
        return await feeder.feed(data)

    @bridge
    def loop() -> None:
        sock.sendall(HELLO)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            reply = feed(data)
            if reply:
                sock.sendall(reply)

    try:
        await loop()
    finally:
        sock.close()
