"""The SoC's configuration as plain data (no LiteX here: the worker reads it too)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Bridge = Literal["sim", "uartbone"]

#: Byte address of each bus region (see docs/memory-map.md).
MEM_MAP = {
    "csr": 0x0000_0000,
    "sram": 0x0100_0000,
    "user": 0x2000_0000,
}


@dataclass(frozen=True)
class SoCConfig:
    """Everything that shapes the SoC's gateware; part of every build's cache key."""

    #: How the host reaches the bus: ``sim`` (cocotb ports) or ``uartbone``.
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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The simulated lab's SoC: a small bus timeout, so an unmapped access fails fast.
SIM_CONFIG = SoCConfig()
