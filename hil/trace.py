"""Traces of a run: the host side of the SoC's scope (``hil.gateware.scope``), without
I/O. It reads the scope's layout from a build's memory map, plans the bus accesses that
arm, stop and read it back (a backend runs them like any transaction), decodes the words
read into samples and writes them as a VCD. Imports no LiteX: the worker runs it.

    layout = scope_layout(backend.memory_map(board))      # None: no scope in this build
    run(arm(layout, signals)); run(the user's transactions)
    status = run(stop(layout))[-1]                         # the last access's word
    capture = decode(layout, run(readout(layout, status)))  # every word read, in order
    vcd = to_vcd(layout, capture, signals)
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vcd import VCDWriter

from fpgalab.hil.gateware.bus import ADDRESS_SPACE, Op
from fpgalab.hil.gateware.config import SCOPE_BUS
from fpgalab.hil.gateware.designfile import probes_problem

__all__ = ["Access", "Capture", "Probe", "Sample", "ScopeLayout", "TraceError", "arm",
           "decode", "readout", "scope_layout", "stop", "to_vcd"]  # fmt: skip

#: The widths the bus's signals may have (``adr``: the user region's word offset).
BUS_WIDTHS = {"cyc": (1, 1), "stb": (1, 1), "we": (1, 1), "adr": (1, 30), "sel": (4, 4),
              "dat_w": (32, 32), "dat_r": (32, 32), "ack": (1, 1), "err": (1, 1)}  # fmt: skip
assert tuple(BUS_WIDTHS) == SCOPE_BUS
#: Bounds on what a memory map may claim (it is written by the build's sandboxed code).
MAX_DEPTH = 1 << 16
MAX_TIME_BITS = 64
MAX_CLOCK_HZ = 10**10
MAX_SIGNALS_TEXT = 2048
#: Words one readout access reads at most.
READ_WORDS = 256
#: ``scope_status``: the samples stored in bits 0-30, bit 31 set if one was dropped.
COUNT_MASK = 0x7FFF_FFFF
OVERFLOW = 1 << 31
#: The scope's CSRs, by their name in the memory map.
CSRS = ("scope_control", "scope_qualify", "scope_status")


class TraceError(Exception):
    """A trace cannot be taken or made; the message is shown to the user as is."""


@dataclass(frozen=True)
class Probe:
    """One signal of a sample: a bus signal or a design's probe."""

    name: str
    width: int


@dataclass(frozen=True)
class ScopeLayout:
    """What a host knows of a build's scope (from its memory map): the signals of a
    sample in stored order, after a ``time_bits`` cycle counter, and where it is."""

    signals: tuple[Probe, ...]
    depth: int
    clock_hz: int
    time_bits: int
    #: Byte addresses of the CSRs and of the samples' region.
    control: int
    qualify: int
    status: int
    base: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.signals)

    @property
    def probes(self) -> tuple[Probe, ...]:
        """The design's probes (the signals after the bus's)."""
        return self.signals[len(SCOPE_BUS) :]

    @property
    def width(self) -> int:
        return self.time_bits + sum(s.width for s in self.signals)

    @property
    def words(self) -> int:
        """Bus words per sample."""
        return -(-self.width // 32)


@dataclass(frozen=True)
class Access:
    """One bus access of a plan: ``op`` at consecutive words from byte ``address``
    (``backends.base.Transaction`` has the same fields)."""

    op: Op
    address: int
    data: tuple[int, ...] = ()
    length: int = 1


class Sample(NamedTuple):
    #: Clock cycles since the capture was armed.
    cycle: int
    #: One value per signal of the layout, in its order.
    values: tuple[int, ...]


@dataclass(frozen=True)
class Capture:
    samples: tuple[Sample, ...]
    #: The scope filled up and dropped samples: the run was longer than it holds.
    full: bool


# The layout ---------------------------------------------------------------------------------


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise TraceError(f"the memory map's {what} is not a number from {low} to {high}")
    return value


def _signals(text: Any) -> tuple[Probe, ...]:
    if not isinstance(text, str) or len(text) > MAX_SIGNALS_TEXT:
        raise TraceError("the memory map's scope_signals is not a list of signals")
    signals = []
    for item in text.split(","):
        match = re.fullmatch(r"([a-z][a-z0-9_]{0,31}):([0-9]{1,3})", item)
        if match is None:
            raise TraceError(f"the memory map's scope_signals has a malformed entry {item[:40]!a}")
        signals.append(Probe(match[1], int(match[2])))
    bus, probes = signals[: len(SCOPE_BUS)], signals[len(SCOPE_BUS) :]
    if tuple(s.name for s in bus) != SCOPE_BUS:
        raise TraceError("the memory map's scope_signals does not start with the bus's signals")
    for signal in bus:
        low, high = BUS_WIDTHS[signal.name]
        _int(signal.width, f"scope width of {signal.name}", low, high)
    if problem := probes_problem([(p.name, p.width) for p in probes]):
        raise TraceError(f"the memory map's scope probes are not valid: {problem}")
    return tuple(signals)


def _address(registers: Mapping[str, Any], name: str) -> int:
    entry = registers.get(name)
    if not isinstance(entry, Mapping) or entry.get("size") != 1:
        raise TraceError(f"the memory map has no one-word CSR {name}")
    address = _int(entry.get("addr"), f"address of {name}", 0, ADDRESS_SPACE - 4)
    if address % 4:
        raise TraceError(f"the memory map's address of {name} is not word-aligned")
    return address


def scope_layout(memory_map: Mapping[str, Any] | None) -> ScopeLayout | None:
    """The scope of the build whose memory map (LiteX ``csr.json``) this is; None if the
    build has none. TraceError if the map claims a scope that does not add up."""
    if not isinstance(memory_map, Mapping):
        return None
    constants = memory_map.get("constants")
    if not isinstance(constants, Mapping) or "scope_signals" not in constants:
        return None
    registers = memory_map.get("csr_registers")
    memories = memory_map.get("memories")
    if not isinstance(registers, Mapping) or not isinstance(memories, Mapping):
        raise TraceError("the memory map has a scope but no CSRs or memory regions")
    signals = _signals(constants["scope_signals"])
    depth = _int(constants.get("scope_depth"), "scope_depth", 1, MAX_DEPTH)
    if depth & (depth - 1):
        raise TraceError("the memory map's scope_depth is not a power of two")
    region = memories.get("scope")
    if not isinstance(region, Mapping):
        raise TraceError("the memory map has no scope region")
    layout = ScopeLayout(
        signals=signals,
        depth=depth,
        clock_hz=_int(constants.get("config_clock_frequency"), "clock frequency", 1, MAX_CLOCK_HZ),
        time_bits=_int(constants.get("scope_time_bits"), "scope_time_bits", 1, MAX_TIME_BITS),
        control=_address(registers, "scope_control"),
        qualify=_address(registers, "scope_qualify"),
        status=_address(registers, "scope_status"),
        base=_int(region.get("base"), "scope region's base", 0, ADDRESS_SPACE - 4),
    )
    size = _int(region.get("size"), "scope region's size", 4, ADDRESS_SPACE)
    if layout.base % 4:
        raise TraceError("the memory map's scope region is not word-aligned")
    if layout.base + size > ADDRESS_SPACE:
        raise TraceError("the memory map's scope region runs past the 32-bit bus")
    if size < 4 * layout.words * depth:
        raise TraceError("the memory map's scope region is smaller than its samples")
    return layout


# Plans ----------------------------------------------------------------------------------------


def _chosen(layout: ScopeLayout, signals: Iterable[str] | None) -> list[str]:
    """The signals named (all if None), checked against the layout, in its order."""
    if signals is None:
        return list(layout.names)
    wanted = set(signals)
    if not wanted:
        raise TraceError("no signals chosen for the trace")
    if unknown := wanted - set(layout.names):
        shown = ", ".join(repr(name[:40]) for name in sorted(unknown)[:8])
        raise TraceError(
            f"unknown signal(s) {shown}: this build's scope has {', '.join(layout.names)}"
        )
    return [name for name in layout.names if name in wanted]


def arm(layout: ScopeLayout, signals: Sequence[str] | None = None) -> list[Access]:
    """The writes that clear and arm a capture. Bus activity stores samples if any bus
    signal is chosen; each chosen probe's changes do (all: ``signals`` None)."""
    chosen = set(_chosen(layout, signals))
    mask = int(any(name in chosen for name in SCOPE_BUS))
    for i, probe in enumerate(layout.probes):
        if probe.name in chosen:
            mask |= 1 << (1 + i)
    return [Access(Op.WRITE, layout.qualify, (mask,)), Access(Op.WRITE, layout.control, (1,))]


def stop(layout: ScopeLayout) -> list[Access]:
    """Ends the capture wherever it is (its last sample is the stop); the last access reads
    the scope's status, the ``level`` that ``readout`` takes."""
    return [Access(Op.WRITE, layout.control, (0,)), Access(Op.READ, layout.status)]


def _count(layout: ScopeLayout, level: int) -> int:
    count = level & COUNT_MASK
    if not 0 <= level < 1 << 32 or count > layout.depth:
        raise TraceError(
            f"the scope reports {count} samples, more than the {layout.depth} it holds "
            "(a garbled reply?)"
        )
    return count


def readout(layout: ScopeLayout, level: int) -> list[Access]:
    """The reads that drain a stopped capture of ``level`` (the status ``stop`` read): the
    status again, then each word of every sample stored, at most ``depth`` samples."""
    count = _count(layout, level)
    plan = [Access(Op.READ, layout.status)]
    for k in range(layout.words):
        start = layout.base + 4 * k * layout.depth
        for first in range(0, count, READ_WORDS):
            plan.append(Access(Op.READ, start + 4 * first, length=min(READ_WORDS, count - first)))
    return plan


# Samples and VCD ------------------------------------------------------------------------------


def decode(layout: ScopeLayout, words: Sequence[int]) -> Capture:
    """The samples from every word ``readout``'s plan read, in order. The stored cycle
    counter wraps: each sample is taken to follow the last by less than a wrap."""
    if not words:
        raise TraceError("the scope's readout read nothing")
    count = _count(layout, words[0])
    if len(words) != 1 + layout.words * count:
        raise TraceError(
            f"the scope's readout has {len(words)} words; {count} samples take "
            f"{1 + layout.words * count}"
        )
    time_mask = (1 << layout.time_bits) - 1
    samples = []
    cycle = previous = 0
    for s in range(count):
        value = 0
        for k in range(layout.words):
            value |= (words[1 + k * count + s] & 0xFFFF_FFFF) << (32 * k)
        raw = value & time_mask
        cycle = raw if s == 0 else cycle + ((raw - previous) & time_mask)
        previous = raw
        value >>= layout.time_bits
        values = []
        for signal in layout.signals:
            values.append(value & ((1 << signal.width) - 1))
            value >>= signal.width
        samples.append(Sample(cycle, tuple(values)))
    return Capture(tuple(samples), full=bool(words[0] & OVERFLOW))


def to_vcd(layout: ScopeLayout, capture: Capture, signals: Sequence[str] | None = None) -> bytes:
    """The capture as a VCD: the bus's signals in scope ``bus``, the design's probes in
    ``design``, at the times the cycle counter says (1 ps resolution; no clock signal)."""
    chosen = _chosen(layout, signals)
    index = {name: i for i, name in enumerate(layout.names)}
    text = io.StringIO()
    with VCDWriter(text, timescale="1 ps", date="", version="fpgalab scope") as writer:
        variables = []
        for name in chosen:
            scope = "bus" if name in SCOPE_BUS else "design"
            width = layout.signals[index[name]].width
            var = writer.register_var(scope, name, "wire", size=width)
            variables.append((var, index[name]))
        last = 0
        for sample in capture.samples:
            last = sample.cycle * 10**12 // layout.clock_hz
            for var, i in variables:
                writer.change(var, last, sample.values[i])
        writer.flush(last)
    return text.getvalue().encode("ascii")
