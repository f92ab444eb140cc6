"""A small ALU on the lab's user slot: the design the regression suite beside it tests.

word 0  A        read/write
word 1  B        read/write
word 2  OP       read/write: 0 add, 1 sub, 2 and, 3 or, 4 xor, 5 shl, 6 shr (by B mod 32)
word 3  RESULT   read-only: A OP B, 32 bits (an unknown OP gives 0)
word 4  ID       read-only: 0xA1000001 (this design)
words 5-7        read as 0
word 8 and above bus error
"""

from litex.soc.interconnect import wishbone
from migen import Case, If, Module, Signal

ALU_ID = 0xA1000001


class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")

        a, b, op, result = Signal(32), Signal(32), Signal(3), Signal(32)
        self.comb += Case(
            op,
            {
                0: result.eq(a + b),
                1: result.eq(a - b),
                2: result.eq(a & b),
                3: result.eq(a | b),
                4: result.eq(a ^ b),
                5: result.eq(a << b[:5]),
                6: result.eq(a >> b[:5]),
                "default": result.eq(0),
            },
        )

        word = bus.adr[:3]
        mapped = bus.adr[3:] == 0
        access = bus.cyc & bus.stb & ~bus.ack & ~bus.err
        self.sync += [
            bus.ack.eq(0),
            bus.err.eq(0),
            If(access & ~mapped, bus.err.eq(1)).Elif(
                access,
                bus.ack.eq(1),
                If(
                    bus.we,
                    Case(
                        word,
                        {
                            0: a.eq(bus.dat_w),
                            1: b.eq(bus.dat_w),
                            2: op.eq(bus.dat_w),
                            "default": [],
                        },
                    ),
                ),
                Case(
                    word,
                    {
                        0: bus.dat_r.eq(a),
                        1: bus.dat_r.eq(b),
                        2: bus.dat_r.eq(op),
                        3: bus.dat_r.eq(result),
                        4: bus.dat_r.eq(ALU_ID),
                        "default": bus.dat_r.eq(0),
                    },
                ),
            ),
        ]
