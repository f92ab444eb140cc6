"""The scope: a logic analyzer on the user slot's bus and the design's probes, in every
build of the SoC. Armed and stopped by the host through CSRs, read back as a memory
region; ``hil.trace`` is its host side (plans of accesses, decoding, VCD).

A sample is ``Cat(cycle, cyc, stb, we, adr, sel, dat_w, dat_r, ack, err, *probes)``
(``cycle``: clock cycles since the capture was armed, ``SCOPE_TIME_BITS`` wide, wrapping),
stored only on a cycle that qualifies:

- the cycle right after the arm (every signal's value at the start), and the cycle of
  the stop (the end of the window);
- while armed, a cycle where ``cyc`` is high, or was high the cycle before (so each
  access's end is seen), if ``qualify`` bit 0 is set;
- while armed, a cycle where probe ``i`` differs from its value the cycle before, if
  ``qualify`` bit ``1 + i`` is set.

Once ``depth`` samples are stored, the scope stores no more and sets ``status`` bit 31
(a qualifying cycle was dropped).

LiteScope (``litescope.core``) is not reused: its analyzer stores every clock (over
UARTBone, accesses ~10k cycles apart, its memory would hold less than one), and its
storage flushes for ``depth`` cycles after each arm (the start of a run would be lost),
cannot be stopped before it is full, and once stopped drains into a clock-crossing FIFO
(its level is then not what was stored). This one is a block RAM written at a sample
counter and read back as a bus region: bulk reads, not one CSR read per word.

Host side: ``control`` (write 1: arm, clearing the capture; write 0: stop), ``qualify``
(above), ``status`` (bits 0-30: samples stored; bit 31: overflowed); the memory region
holds word ``k`` (bits ``32k..32k+31``) of sample ``s`` at word ``k * depth + s``.
"""

from __future__ import annotations

from litex.gen import LiteXModule
from litex.soc.interconnect import wishbone
from litex.soc.interconnect.csr import CSRStatus, CSRStorage
from migen import Case, Cat, If, Memory, Signal
from migen.fhdl.structure import _Value

from fpgalab.hil.gateware.config import SCOPE_BUS, SCOPE_TIME_BITS

__all__ = ["Scope", "region_size", "sample_words"]

#: ``status``: the bit that says a qualifying cycle found the memory full.
OVERFLOW_BIT = 31


def sample_words(width: int) -> int:
    """Bus words one sample of ``width`` bits takes."""
    return -(-width // 32)


def region_size(width: int, depth: int) -> int:
    """Bytes of the scope's memory region: a power of two that holds every sample."""
    size = 4 * sample_words(width) * depth
    return 1 << (size - 1).bit_length()


def _log2(n: int) -> int:
    assert n > 0 and n & (n - 1) == 0, f"{n} is not a power of two"
    return n.bit_length() - 1


class Scope(LiteXModule):
    """Samples ``slot`` (the user region's bus; ``adr`` as the word offset inside a region
    of ``user_size`` bytes) and ``probes`` (name → signal) into ``depth`` samples."""

    def __init__(
        self, slot: wishbone.Interface, user_size: int, probes: dict[str, _Value], depth: int
    ) -> None:
        depth_bits = _log2(depth)
        adr_bits = _log2(user_size // 4)
        bus_values: dict[str, _Value] = {
            "cyc": slot.cyc, "stb": slot.stb, "we": slot.we, "adr": slot.adr[:adr_bits],
            "sel": slot.sel, "dat_w": slot.dat_w, "dat_r": slot.dat_r, "ack": slot.ack,
            "err": slot.err,
        }  # fmt: skip
        assert tuple(bus_values) == SCOPE_BUS
        #: (name, width) of every signal of a sample, after the cycle counter, in order.
        self.layout = [(name, len(value)) for name, value in (*bus_values.items(), *probes.items())]
        self.depth = depth
        self.width = SCOPE_TIME_BITS + sum(width for _, width in self.layout)
        self.words = sample_words(self.width)

        self.control = CSRStorage(1, description="Write 1: arm (clears the capture); 0: stop.")
        self.qualify = CSRStorage(1 + len(probes), reset=(1 << (1 + len(probes))) - 1,
                                  description="Bit 0: bus activity stores a sample; bit 1+i: "
                                  "a change of probe i does.")  # fmt: skip
        self.status = CSRStatus(32, description="[0:31] samples stored; bit 31: overflowed.")
        #: The readout region's slave (word addressing; read-only, writes are ignored).
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")

        # # #

        # Qualifier ------------------------------------------------------------------------------
        cycle = Signal(SCOPE_TIME_BITS)
        armed = Signal()
        first = Signal()  # the cycle after the arm
        count = Signal(max=depth + 1)
        overflow = Signal()
        cyc_d = Signal()
        arm = self.control.re & self.control.storage[0]
        stop = self.control.re & ~self.control.storage[0] & armed

        changed = Signal(max(1, len(probes)))
        if probes:
            current = Cat(*probes.values())
            previous = Signal(len(current))
            self.sync += previous.eq(current)
            offset = 0
            for i, value in enumerate(probes.values()):
                width = len(value)
                self.comb += changed[i].eq(
                    current[offset : offset + width] != previous[offset : offset + width]
                )
                offset += width
        qualified = Signal()
        self.comb += qualified.eq(
            first | stop
            | (self.qualify.storage[0] & (slot.cyc | cyc_d))
            | ((changed & (self.qualify.storage >> 1)) != 0)
        )  # fmt: skip
        store = Signal()
        self.comb += store.eq(armed & qualified & (count < depth))

        self.sync += [
            cyc_d.eq(slot.cyc),
            # Nothing of the scope toggles while it is not armed (a simulator's work).
            If(armed, cycle.eq(cycle + 1)),
            first.eq(0),
            If(store, count.eq(count + 1)),
            If(armed & qualified & (count >= depth), overflow.eq(1)),
            If(arm,
                armed.eq(1), first.eq(1), cycle.eq(0), count.eq(0), overflow.eq(0),
            ).Elif(stop,
                armed.eq(0),
            ),
        ]  # fmt: skip
        self.comb += [
            self.status.status[: len(count)].eq(count),
            self.status.status[OVERFLOW_BIT].eq(overflow),
        ]

        # Storage --------------------------------------------------------------------------------
        sample = Cat(cycle, *bus_values.values(), *probes.values())
        mem = Memory(self.words * 32, depth, name="scope_mem")
        write = mem.get_port(write_capable=True)
        read = mem.get_port()
        self.specials += mem, write, read
        self.comb += [
            write.adr.eq(count[:depth_bits]),
            write.dat_w.eq(sample),
            write.we.eq(store),
        ]

        # Readout: word k of sample s at word k * depth + s of the region --------------------------
        bus = self.bus
        chunk = Signal(max(1, (self.words - 1).bit_length()))
        self.comb += [
            read.adr.eq(bus.adr[:depth_bits]),
            chunk.eq(bus.adr[depth_bits:]),
            bus.dat_r.eq(0),
            Case(chunk, {k: bus.dat_r.eq(read.dat_r[32 * k : 32 * k + 32])
                         for k in range(self.words)}),
        ]  # fmt: skip
        self.sync += bus.ack.eq(bus.cyc & bus.stb & ~bus.ack)
