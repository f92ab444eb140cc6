"""The SoC's configuration as plain data (no LiteX here: the worker reads it too)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Bridge = Literal["sim", "uartbone", "stream"]

#: Byte address of each bus region (see docs/memory-map.md).
MEM_MAP = {
    "csr": 0x0000_0000,
    "sram": 0x0100_0000,
    "scope": 0x0200_0000,
    "user": 0x2000_0000,
}

#: Registers every build of the SoC has at the same address (docs/memory-map.md).
SCRATCH = 0x0000_0004  # ctrl_scratch: read/write, resets to 0x12345678
BUS_ERRORS = 0x0000_0008  # ctrl_bus_errors: bus timeouts since reset
IDENTIFIER = 0x0000_0800  # identifier_mem: one character per word, NUL-terminated
#: Every identifier the lab builds starts with this.
IDENT_PREFIX = "fpgalab"

#: The scope (``hil.gateware.scope``, docs/designs.md "Waveforms"): the user slot's bus
#: signals it samples, in the order they are stored (each name is also a signal's name
#: in a trace, so no probe may take one); a probe's name, and how many a design may have.
SCOPE_BUS = ("cyc", "stb", "we", "adr", "sel", "dat_w", "dat_r", "ack", "err")
#: Bits of the cycle counter stored with every sample (cycles since the capture was armed).
SCOPE_TIME_BITS = 32
PROBE_NAME = r"[a-z][a-z0-9_]{0,31}"
MAX_PROBES = 16
MAX_PROBE_BITS = 64


@dataclass(frozen=True)
class SoCConfig:
    """Everything that shapes the SoC's gateware; part of every build's cache key."""

    #: How the host reaches the bus: ``sim`` (cocotb ports), ``uartbone`` (a UART on
    #: real boards) or ``stream`` (UARTBone gateware fed a byte per cycle: the twins).
    bridge: Bridge = "sim"
    #: Nominal; a simulation runs as fast as it can.
    sys_clk_freq: int = 50_000_000
    sram_size: int = 0x4_0000
    user_size: int = 0x100_0000
    #: Cycles a slave may take before the bus answers for it (and counts a bus error).
    bus_timeout: int = 4096
    #: Words one burst of the simulation bridge moves (``sim`` only).
    burst_depth: int = 256
    uart_baudrate: int = 115200
    #: Bytes UARTBone's receive FIFO holds: one write frame (6 + 4 * 255) and more.
    uart_rx_fifo: int = 2048
    #: Samples the scope holds (a power of two; 0: no scope in the SoC). A sample is a
    #: block-RAM word as wide as its signals and cycle counter (~127 bits, +64 of probes).
    scope_depth: int = 4096

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The simulated lab's SoC: a small bus timeout, so an unmapped access fails fast.
SIM_CONFIG = SoCConfig()

#: Real boards: UARTBone at 1 Mbaud, ``sys`` straight from the board's 25 MHz clock
#: (no PLL), 64 KiB of SRAM (an LFE5U-25F has 56 block RAMs of 2 KiB). The same bus
#: timeout as in simulation: a silent slave costs 164 µs.
HW_CONFIG = SoCConfig(
    bridge="uartbone",
    sys_clk_freq=25_000_000,
    uart_baudrate=1_000_000,
    sram_size=0x1_0000,
    scope_depth=512,
)

#: A twin of a real board: the same SoC as HW_CONFIG, with UARTBone's UART PHY
#: replaced by a byte stream the simulator feeds from TCP.
TWIN_CONFIG = dataclasses.replace(HW_CONFIG, bridge="stream")
