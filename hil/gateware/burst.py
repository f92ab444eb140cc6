"""A Wishbone master for simulation hosts: one request runs up to ``depth`` accesses
in gateware, so the host (cocotb) touches the model once per burst, not once per clock.

The host loads ``adr``, ``we``, ``length`` and (for writes) ``wdata`` — ``depth``
words packed little-end first — then toggles ``req``. ``done`` follows ``req``
when the burst has finished: ``count`` accesses succeeded, ``err`` tells whether
the next one failed, and ``timed_out`` whether that failure was the SoC's bus
timeout (no slave answered). For reads, word ``i`` of ``count`` sits at word
``depth - count + i`` of ``rdata``: each acknowledged word is shifted in at the top;
``rlast`` holds the last of them too. A one-word write may come in the narrow ``wword``
instead of ``wdata``, and a one-word read be read from ``rlast``: the simulator copies
the whole of a wide port for any access to it (~15 us at a depth of 256).
"""

from __future__ import annotations

from litex.gen import LiteXModule
from litex.soc.interconnect import wishbone
from migen import Cat, If, Signal
from migen.genlib.fsm import FSM, NextState, NextValue

#: The host-facing signals; at the top level each is the port ``burst_<name>``.
PORTS = ("req", "done", "we", "adr", "length", "wdata", "wword", "rdata", "rlast", "count",
         "err", "timed_out")  # fmt: skip
#: Those the host drives; the others it reads.
INPUTS = frozenset({"req", "we", "adr", "length", "wdata", "wword"})


class BurstMaster(LiteXModule):
    def __init__(self, depth: int = 256) -> None:
        assert depth >= 1
        width = 32 * depth
        self.depth = depth
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")

        # Host side.
        self.req = Signal()
        self.done = Signal()
        self.we = Signal()
        self.adr = Signal(30)
        self.length = Signal(max=depth + 1)
        self.wdata = Signal(width)
        self.wword = Signal(32)
        self.rdata = Signal(width, reset_less=True)
        self.rlast = Signal(32, reset_less=True)
        self.count = Signal(max=depth + 1)
        self.err = Signal()
        self.timed_out = Signal()
        #: Driven by the SoC: its bus timeout answered the access in flight.
        self.timeout = Signal()

        # # #

        wbuf = Signal(width, reset_less=True)
        adr = Signal(30)
        we = Signal()
        length = Signal(max=depth + 1)
        bus = self.bus

        # The wide registers change only on load and shift, outside the FSM's
        # next-value logic: a simulator then copies them only when they change.
        load = Signal()
        shift = Signal()
        self.sync += [
            If(load,
                If(self.length == 1, wbuf.eq(self.wword)).Else(wbuf.eq(self.wdata)),
            ).Elif(shift, wbuf.eq(wbuf[32:])),
            If(shift, self.rdata.eq(Cat(self.rdata[32:], bus.dat_r)), self.rlast.eq(bus.dat_r)),
        ]  # fmt: skip

        self.fsm = fsm = FSM(reset_state="IDLE")
        fsm.act("IDLE",
            If(self.req != self.done,
                load.eq(1),
                NextValue(adr, self.adr),
                NextValue(we, self.we),
                NextValue(length, self.length),
                NextValue(self.count, 0),
                NextValue(self.err, 0),
                NextValue(self.timed_out, 0),
                If(self.length == 0,
                    NextState("FINISH"),
                ).Else(
                    NextState("ACCESS"),
                ),
            ),
        )  # fmt: skip
        fsm.act("ACCESS",
            bus.cyc.eq(1),
            bus.stb.eq(1),
            bus.we.eq(we),
            bus.sel.eq(0xF),
            bus.adr.eq(adr),
            bus.dat_w.eq(wbuf[:32]),
            # the last access answers the host on its own edge (no FINISH cycle): each
            # one-word access of an ``ops`` list is a clock cycle shorter
            If(bus.err | (bus.ack & self.timeout),
                NextValue(self.err, 1),
                NextValue(self.timed_out, self.timeout),
                NextValue(self.done, self.req),
                NextState("IDLE"),
            ).Elif(bus.ack,
                NextValue(self.count, self.count + 1),
                NextValue(adr, adr + 1),
                shift.eq(1),
                If(self.count + 1 == length,
                    NextValue(self.done, self.req),
                    NextState("IDLE"),
                ).Else(
                    # One idle cycle between accesses, as LiteX's own bridges do:
                    # slaves that ack on a registered stb see a clean edge.
                    NextState("GAP"),
                ),
            ),
        )  # fmt: skip
        fsm.act("GAP", NextState("ACCESS"))
        fsm.act("FINISH",  # an empty request
            NextValue(self.done, self.req),
            NextState("IDLE"),
        )  # fmt: skip

    def port_signals(self) -> dict[str, Signal]:
        """The host-facing signals by port name."""
        return {name: getattr(self, name) for name in PORTS}
