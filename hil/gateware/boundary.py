"""What a user's design may put on a board: logic, memory and arithmetic inside its slot,
nothing that reaches outside it — no pins, no clocks, no configuration or JTAG blocks.

Checked on what the toolchain produced for the build (the constraint file LiteX wrote,
the netlist yosys synthesised), against the same of the base SoC: a design that asked
LiteX's platform for pins, or instantiated a primitive in Verilog or through Migen, shows
up there however it got there.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REFUSED", "Boundary", "BoundaryError"]

REFUSED = "refused (a design gets its slot: logic, block RAM and DSP, nothing that reaches outside)"

#: ECP5 cells of plain logic, memory and arithmetic, as synth_ecp5 leaves them: a design
#: may use any number of these. Any other type is the base SoC's alone.
SLOT_CELLS = frozenset({
    "LUT4", "TRELLIS_FF", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_DPR16X4", "TRELLIS_RAMW",
    "DP16KD", "PDPW16KD", "MULT18X18D", "ALU54B", "$scopeinfo",
})  # fmt: skip
#: What the cells a design may not add do, for the message that refuses them.
WHAT = {
    "EHXPLLL": "a PLL", "USRMCLK": "the configuration flash's clock", "JTAGG": "the JTAG port",
    "TRELLIS_IO": "an I/O buffer", "BB": "an I/O buffer", "IB": "an input buffer",
    "OB": "an output buffer", "OBZ": "an output buffer", "BBPU": "an I/O buffer",
    "BBPD": "an I/O buffer", "IBPU": "an input buffer", "IBPD": "an input buffer",
    "ILVDS": "an LVDS input", "OLVDS": "an LVDS output", "DCCA": "a global clock buffer",
    "DCSC": "a clock switch", "CLKDIVF": "a clock divider", "ECLKSYNCB": "an edge clock",
    "ECLKBRIDGECS": "an edge clock bridge", "OSCG": "the internal oscillator",
    "SEDGA": "the configuration memory's error check", "GSR": "the global set/reset",
    "SGSR": "the global set/reset", "PUR": "the power-up reset", "DTR": "the temperature "
    "sensor", "EXTREFB": "a SerDes reference clock", "DCUA": "a SerDes",
    "START": "the start-up block", "DELAYF": "an I/O delay", "DELAYG": "an I/O delay",
    "IDDRX1F": "an I/O register", "ODDRX1F": "an I/O register", "DQSBUFM": "a DDR strobe",
}  # fmt: skip
#: Names shown before "and N more".
SHOWN = 4


class BoundaryError(ValueError):
    """A build's netlist or constraint file could not be read."""


@dataclass(frozen=True)
class Boundary:
    """Where a build touches the outside of its user slot."""

    #: Top-level ports: name -> (direction, width).
    ports: Mapping[str, tuple[str, int]]
    #: Cells beyond plain logic: type -> how many.
    cells: Mapping[str, int]
    #: The constraint file's statements (pins, I/O standards, clocks), normalised.
    constraints: tuple[str, ...]

    @classmethod
    def of(cls, netlist: bytes | None, lpf: bytes, top: str) -> Boundary:
        """From yosys' JSON netlist (None: the constraints alone, before synthesis) and
        LiteX's ``.lpf``; raises BoundaryError."""
        ports: dict[str, tuple[str, int]] = {}
        cells: Counter[str] = Counter()
        if netlist is not None:
            try:
                modules = json.loads(netlist)["modules"]
                module = modules[top]
                for name, port in module["ports"].items():
                    ports[str(name)] = (str(port["direction"]), len(port["bits"]))
                for cell in module["cells"].values():
                    if cell["type"] not in SLOT_CELLS:
                        cells[str(cell["type"])] += 1
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BoundaryError(f"the netlist of {top} is unreadable ({exc!r})") from None
        try:
            text = lpf.decode("utf-8")
        except UnicodeDecodeError:
            raise BoundaryError("the constraint file is not UTF-8 text") from None
        statements = [" ".join(s.split()) for s in text.split(";")]
        return cls(ports, dict(cells), tuple(s for s in statements if s))

    def to_json(self) -> dict[str, Any]:
        return {"ports": {k: list(v) for k, v in self.ports.items()}, "cells": dict(self.cells),
                "constraints": list(self.constraints)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Boundary:
        ports = {str(k): (str(v[0]), int(v[1])) for k, v in data["ports"].items()}
        cells = {str(k): int(v) for k, v in data["cells"].items()}
        return cls(ports, cells, tuple(str(s) for s in data["constraints"]))

    def beyond(self, base: Boundary, netlist: bool = True) -> list[str]:
        """What this build has outside its slot that ``base`` does not, in words (empty:
        nothing). ``netlist``: compare ports and cells too, not only constraints."""
        found: list[str] = []
        extra = [s for s in self.constraints if s not in base.constraints]
        missing = [s for s in base.constraints if s not in self.constraints]
        if extra:
            found.append(f"pin constraints the lab's SoC does not have: {_some(extra)}")
        if missing:
            found.append(f"the lab's own pin constraints changed: {_some(missing)} gone")
        if not netlist:
            return found
        ports = [p for p in self.ports if self.ports[p] != base.ports.get(p)]
        gone = [p for p in base.ports if p not in self.ports]
        if ports:
            found.append(f"top-level ports the lab's SoC does not have: {_some(ports)}")
        if gone:
            found.append(f"the lab's own top-level ports changed: {_some(gone)} gone")
        for kind, count in sorted(self.cells.items()):
            more = count - base.cells.get(kind, 0)
            if more > 0:
                what = WHAT.get(kind, "a primitive outside plain logic")
                found.append(f"{more} {kind} ({what})")
        return found


def _some(names: list[str]) -> str:
    shown = ", ".join(_quoted(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _quoted(text: str) -> str:
    """A name or statement from a build, quoted and kept short (it came from the design)."""
    text = re.sub(r"[^\x20-\x7e]", "?", text)
    return f"`{text[:60]}{'...' if len(text) > 60 else ''}`"
