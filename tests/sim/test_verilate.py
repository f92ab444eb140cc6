"""The simulated lab refuses a design with a combinational loop, as the hardware flow does
(``sim.verilate``'s check): a real loop fails the build naming its signals; a vector whose
bits feed each other without a cycle builds; the lab's own SoCs have no loop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fpgalab.hil.build.errors import DesignBuildError
from fpgalab.hil.gateware.config import SIM_CONFIG, TWIN_CONFIG, SoCConfig
from fpgalab.sim.verilate import find_loops
from fpgalab.sim.verilator import Builder
from tests.designs import PORTS, RING_OSCILLATOR

pytestmark = pytest.mark.sim

#: Each carry bit comes from the one before it: a chain through one vector, no loop.
RIPPLE_CARRY = (
    PORTS
    + """    reg  [15:0] a, b;
    wire [16:0] c;
    wire [15:0] s;
    assign c[0] = 1'b0;
    genvar i;
    generate for (i = 0; i < 16; i = i + 1) begin : bit_
        assign s[i] = a[i] ^ b[i] ^ c[i];
        assign c[i + 1] = (a[i] & b[i]) | (c[i] & (a[i] ^ b[i]));
    end endgenerate
    always @(posedge clk) begin
        wb_ack <= wb_cyc & wb_stb & ~wb_ack;
        if (wb_cyc & wb_stb & wb_we) begin
            if (wb_adr[0]) b <= wb_dat_w[15:0]; else a <= wb_dat_w[15:0];
        end
        wb_dat_r <= {15'd0, c[16], s};
    end
endmodule
"""
)
PYTHON_LOOP = b"""from litex.soc.interconnect import wishbone
from migen import Module, Signal


class Design(Module):
    def __init__(self):
        self.bus = bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        total = Signal(8)
        mixed = Signal(8)
        self.comb += [total.eq(mixed + bus.dat_w[:8]), mixed.eq(total ^ bus.adr[:8])]
        self.sync += [bus.ack.eq(bus.cyc & bus.stb & ~bus.ack), bus.dat_r.eq(mixed)]
"""


def test_verilog_ring_oscillator_is_refused_naming_its_signals(sim_cache: Path) -> None:
    """A loop of inverters fails the build with one line naming the signals around it."""
    log: list[str] = []
    with pytest.raises(DesignBuildError) as info:
        Builder(sim_cache).build("ring.v", RING_OSCILLATOR.encode(), log.append)
    assert re.fullmatch(
        r"%Error: ring\.v:\d+:\d+: combinational loop, refused \(it can oscillate\): "
        r"user_design_i\.[abc]( -> user_design_i\.[abc])+",
        str(info.value),
    ), info.value
    assert any(line.startswith("%Warning-UNOPTFLAT:") for line in log)


def test_python_loop_is_refused(sim_cache: Path) -> None:
    """A loop between two Migen signals fails the build naming both."""
    with pytest.raises(DesignBuildError) as info:
        Builder(sim_cache).build("loop.py", PYTHON_LOOP, lambda line: None)
    error = str(info.value)
    assert error.startswith("%Error: lab_soc.v:") and "combinational loop, refused" in error
    assert re.search(r"_total -> \S*_mixed|_mixed -> \S*_total", error), error


def test_chain_through_one_vector_is_not_a_loop(sim_cache: Path) -> None:
    """A hand-written ripple-carry adder (bits of one vector in a chain) builds."""
    model = Builder(sim_cache).build("ripple.v", RIPPLE_CARRY.encode(), lambda line: None)
    assert model.executable.exists()


@pytest.mark.parametrize("config", [SIM_CONFIG, TWIN_CONFIG], ids=["sim", "twin"])
def test_the_labs_own_soc_has_no_loop(sim_cache: Path, config: SoCConfig, tmp_path: Path) -> None:
    """LiteX's base SoC (simulated, and as the twins build it) passes the loop check."""
    model = Builder(sim_cache, soc=config).base(lambda line: None)
    assert find_loops("lab_soc", [str(model.folder / "src" / "lab_soc.v")], tmp_path / "v") == []
