"""An example Python design with a bug a trace finds: a counter of writes.

word 0  write: count one write (the value written is ignored)
word 1  read: the writes counted so far
word 2  write: clear the count

The bug: it counts a write on every cycle the write is on the bus, and a write is on the
bus two cycles (the one that asks, and the one that answers with ``ack``), so three
writes read back as 6. The count is exported as a probe: a traced run shows it step by
two during each write (docs/designs.md, Traces).
"""

from litex.soc.interconnect import wishbone
from migen import If, Module, Signal


class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        count = Signal(32)
        self.probes = {"count": count}  # what a traced run shows beside the bus

        word = bus.adr[:2]
        asked = bus.cyc & bus.stb
        self.sync += [
            bus.ack.eq(asked & ~bus.ack),
            bus.dat_r.eq(count),
            # BUG: should be `asked & ~bus.ack & bus.we`: this counts the answering cycle too
            If(asked & bus.we & (word == 0), count.eq(count + 1)),
            If(asked & ~bus.ack & bus.we & (word == 2), count.eq(0)),
        ]
