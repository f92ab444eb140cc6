"""An example Python design: eight registers that compute.

word 0  A            read/write
word 1  B            read/write
word 2  A + B        read-only (writes ignored)
word 3  accumulator  a write adds the value; a read returns the sum so far
word 4  0xC0FFEE01   read-only: identifies this design
word 5  cycles       read-only: clock cycles since reset
words 6, 7           read as 0
word 8 and above     bus error (the slave answers with ``err``)
"""

from litex.soc.interconnect import wishbone
from migen import Case, If, Module, Signal

DESIGN_ID = 0xC0FFEE01


class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")

        a = Signal(32)
        b = Signal(32)
        acc = Signal(32)
        cycles = Signal(32)
        word = bus.adr[:3]
        mapped = bus.adr[3:] == 0
        access = bus.cyc & bus.stb & ~bus.ack & ~bus.err

        self.sync += cycles.eq(cycles + 1)
        self.sync += [
            bus.ack.eq(0),
            bus.err.eq(0),
            If(
                access & ~mapped,
                bus.err.eq(1),
            ).Elif(
                access,
                bus.ack.eq(1),
                If(
                    bus.we,
                    Case(
                        word,
                        {
                            0: a.eq(bus.dat_w),
                            1: b.eq(bus.dat_w),
                            3: acc.eq(acc + bus.dat_w),
                            "default": [],
                        },
                    ),
                ),
                Case(
                    word,
                    {
                        0: bus.dat_r.eq(a),
                        1: bus.dat_r.eq(b),
                        2: bus.dat_r.eq(a + b),
                        3: bus.dat_r.eq(acc),
                        4: bus.dat_r.eq(DESIGN_ID),
                        5: bus.dat_r.eq(cycles),
                        "default": bus.dat_r.eq(0),
                    },
                ),
            ),
        ]
