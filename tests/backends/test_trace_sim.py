"""A trace of a run on a simulated board: the scope in the SoC armed, run, stopped and read
back through the backend like any transactions, decoded, written as a VCD and read back
with pyvcd's parser."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence

import pytest
from vcd.reader import TokenKind, tokenize

from fpgalab.backends.base import Backend, Design, Op, Transaction, TransactResult
from fpgalab.backends.sim import SimBackend
from fpgalab.hil.trace import (
    Access,
    Capture,
    ScopeLayout,
    arm,
    decode,
    readout,
    scope_layout,
    to_vcd,
)
from fpgalab.hil.trace import stop as stop_plan
from tests.helpers import Log

pytestmark = pytest.mark.sim

USER = 0x2000_0000
#: Picoseconds per cycle of the simulated SoC's nominal 50 MHz clock.
CYCLE_PS = 20_000

#: A decade counter with an off-by-one bug: it should count 0..9, but wraps only after 10.
#: Word 0: a write ticks it, a read returns it; any other word reads as its offset.
#: ``ticker`` runs freely, every cycle.
COUNTER = b"""
from litex.soc.interconnect import wishbone
from migen import If, Module, Signal

class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        count = Signal(8)
        ticker = Signal(4)
        self.probes = {"count": count, "ticker": ticker}
        self.sync += ticker.eq(ticker + 1)
        self.sync += [
            bus.ack.eq(0),
            If(bus.cyc & bus.stb & ~bus.ack,
                bus.ack.eq(1),
                If(bus.we & (bus.adr == 0),
                    If(count == 10, count.eq(0)).Else(count.eq(count + 1)),  # the bug: == 9
                ),
            ),
        ]
        self.comb += If(bus.adr == 0, bus.dat_r.eq(count)).Else(bus.dat_r.eq(bus.adr))
"""


def txns(accesses: Sequence[Access]) -> list[Transaction]:
    return [Transaction(a.op, a.address, a.data, a.length) for a in accesses]


def run_plan(backend: Backend, accesses: Sequence[Access]) -> list[int]:
    """Run a plan of the scope's on board 0; every word it read, in order."""
    results = backend.transact_many(0, txns(accesses))
    assert len(results) == len(accesses) and all(r.ok for r in results), results
    return [word for result in results for word in result.data]


def traced(
    backend: Backend, layout: ScopeLayout, run: list[Transaction], signals: list[str] | None = None
) -> tuple[list[TransactResult], Capture]:
    """``run`` on board 0 between an arm and a stop; its results and the capture."""
    run_plan(backend, arm(layout, signals))
    results = backend.transact_many(0, run)
    level = run_plan(backend, stop_plan(layout))[-1]
    return results, decode(layout, run_plan(backend, readout(layout, level)))


def parse_vcd(vcd: bytes) -> dict[str, list[tuple[int, int]]]:
    """Each variable's (time, value) changes, as pyvcd's reader tokenizes the file."""
    names: dict[str, str] = {}
    changes: dict[str, list[tuple[int, int]]] = {}
    time = 0
    for token in tokenize(io.BytesIO(vcd)):
        if token.kind is TokenKind.VAR:
            names[token.var.id_code] = token.var.reference
            changes[token.var.reference] = []
        elif token.kind is TokenKind.CHANGE_TIME:
            time = token.time_change
        elif token.kind in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR):
            changes[names[token.data.id_code]].append((time, int(token.data.value)))
    return changes


def value_at(changes: list[tuple[int, int]], time: int) -> int:
    return [value for t, value in changes if t <= time][-1]


@pytest.fixture
def counter(sim: SimBackend) -> ScopeLayout:
    """Board 0 runs the counter design; its scope's layout."""
    built = sim.build(Design("counter.py", COUNTER), Log())
    sim.program(0, built, Log())
    layout = scope_layout(sim.memory_map(0))
    assert layout is not None
    return layout


def test_trace_shows_each_access_and_the_bug(sim: SimBackend, counter: ScopeLayout) -> None:
    """Every bus access of the run is in the VCD, in order, at its cycle, and the counter
    probe shows the wrong value (10) where the bug makes it; the run's results are the
    same with the scope armed as without."""
    layout = counter
    assert [p.name for p in layout.probes] == ["count", "ticker"]
    run = [Transaction(Op.WRITE, USER, (0,)) for _ in range(10)]
    run += [Transaction(Op.READ, USER), Transaction(Op.WRITE, USER, (0,)),
            Transaction(Op.READ, USER), Transaction(Op.WRITE, USER + 8, (7, 8, 9)),
            Transaction(Op.READ, USER + 20, length=3)]  # fmt: skip
    signals = ["cyc", "stb", "we", "adr", "dat_w", "dat_r", "ack", "count"]
    results, capture = traced(sim, layout, run, signals)
    assert [r.data for r in results if r.data] == [[10], [0], [5, 6, 7]]
    assert not capture.full

    vcd = to_vcd(layout, capture, signals)
    changes = parse_vcd(vcd)
    assert set(changes) == set(signals)  # only the chosen ones
    acks = [t for t, v in changes["ack"] if v == 1]
    seen = [
        (value_at(changes["we"], t), value_at(changes["adr"], t),
         value_at(changes["dat_w"] if value_at(changes["we"], t) else changes["dat_r"], t))
        for t in acks
    ]  # fmt: skip
    expected = [(1, 0, 0)] * 10 + [(0, 0, 10), (1, 0, 0), (0, 0, 0)]
    expected += [(1, 2, 7), (1, 3, 8), (1, 4, 9), (0, 5, 5), (0, 6, 6), (0, 7, 7)]
    assert seen == expected
    # The burst master leaves one idle cycle between the accesses of a transfer, and this
    # design acks the cycle after cyc rises: three cycles from ack to ack within one.
    for transfer in (acks[13:16], acks[16:19]):
        assert [b - a for a, b in itertools.pairwise(transfer)] == [3 * CYCLE_PS] * 2
    assert all(t % CYCLE_PS == 0 for t in acks)
    # The counter probe: 1..10 after the first ten ticks (10: the bug), 0 after the 11th.
    assert [value_at(changes["count"], t) for t in acks[:13]] == [*range(1, 11), 10, 0, 0]

    # The same run, not traced, answers the same.
    sim.program(0, sim.build(Design("counter.py", COUNTER), Log()), Log())
    assert sim.transact_many(0, run) == results


def test_probe_changes_store_samples_only_when_chosen(
    sim: SimBackend, counter: ScopeLayout
) -> None:
    """A probe that changes every cycle fills a sample per cycle when chosen, and none
    between accesses when it is not; the capture starts at cycle 0 and ends at the stop."""
    layout = counter
    run = [Transaction(Op.READ, USER + 4, length=4)]
    _, every = traced(sim, layout, run, None)
    cycles = [s.cycle for s in every.samples]
    assert cycles[0] == 0
    assert cycles == list(range(cycles[0], cycles[-1] + 1))  # every cycle
    ticker = layout.names.index("ticker")
    assert all(
        (b.values[ticker] - a.values[ticker]) % 16 == 1
        for a, b in itertools.pairwise(every.samples)
    )

    _, bus_only = traced(sim, layout, run, ["cyc", "ack", "adr", "dat_r"])
    cyc, ack = layout.names.index("cyc"), layout.names.index("ack")
    inner = bus_only.samples[1:-1]  # without the arm's and the stop's samples
    assert len(bus_only.samples) < len(every.samples)
    assert [s.values[layout.names.index("dat_r")] for s in inner if s.values[ack]] == [1, 2, 3, 4]
    # each stored between the two: cyc high, or the cycle after it fell
    previous = {s.cycle: s for s in bus_only.samples}
    assert all(s.values[cyc] or previous[s.cycle - 1].values[cyc] for s in inner)


def test_a_run_longer_than_the_scope_fills_it(sim: SimBackend, counter: ScopeLayout) -> None:
    """A run with more bus cycles than the scope holds: ``depth`` samples, the first of the
    run, and the capture says it is full."""
    layout = counter
    words = layout.depth // 2  # three samples per access
    results, capture = traced(sim, layout, [Transaction(Op.READ, USER + 4, length=words)],
                              ["cyc", "ack", "adr", "dat_r"])  # fmt: skip
    assert results[0].ok
    assert capture.full
    assert len(capture.samples) == layout.depth
    dat_r, ack = layout.names.index("dat_r"), layout.names.index("ack")
    got = [s.values[dat_r] for s in capture.samples if s.values[ack]]
    assert got == list(range(1, len(got) + 1))
    assert len(got) > layout.depth // 4


def test_the_base_soc_has_a_scope_on_the_empty_slot(sim: SimBackend) -> None:
    """With no design, the scope sees the bus only, and the slot's bus errors."""
    sim.reset(0, Log())
    layout = scope_layout(sim.memory_map(0))
    assert layout is not None and layout.probes == ()
    results, capture = traced(sim, layout, [Transaction(Op.READ, USER + 8)])
    assert not results[0].ok
    err, adr = layout.names.index("err"), layout.names.index("adr")
    assert [s.values[adr] for s in capture.samples if s.values[err]] == [2]


#: The same counter in Verilog, its probe an output port.
COUNTER_V = b"""module user_design (
    input  wire        clk,
    input  wire        rst,
    input  wire [29:0] wb_adr,
    input  wire [31:0] wb_dat_w,
    output wire [31:0] wb_dat_r,
    input  wire [3:0]  wb_sel,
    input  wire        wb_cyc,
    input  wire        wb_stb,
    input  wire        wb_we,
    output reg         wb_ack,
    output reg  [7:0]  probe_count
);
    assign wb_dat_r = wb_adr == 0 ? {24'd0, probe_count} : {2'd0, wb_adr};
    always @(posedge clk) begin
        wb_ack <= wb_cyc & wb_stb & ~wb_ack;
        if (rst) probe_count <= 0;
        else if (wb_cyc & wb_stb & ~wb_ack & wb_we & wb_adr == 0)
            probe_count <= probe_count == 10 ? 0 : probe_count + 1;  // the bug: == 9
    end
endmodule
"""


def test_a_verilog_designs_probe_ports_are_traced(sim: SimBackend) -> None:
    """A Verilog design's ``probe_count`` output is in the trace, under ``design``."""
    sim.program(0, sim.build(Design("counter.v", COUNTER_V), Log()), Log())
    layout = scope_layout(sim.memory_map(0))
    assert layout is not None and [p.name for p in layout.probes] == ["count"]
    run = [Transaction(Op.WRITE, USER, (0,)) for _ in range(11)]
    results, capture = traced(sim, layout, run)
    assert all(r.ok for r in results)
    changes = parse_vcd(to_vcd(layout, capture, ["ack", "count"]))
    acks = [t for t, v in changes["ack"] if v == 1]
    assert [value_at(changes["count"], t) for t in acks] == [*range(1, 11), 0]
