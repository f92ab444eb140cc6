"""The scope in the SoC, as LiteX elaborates it (no simulator): its layout in the memory
map, the probes of Python and Verilog designs, and the probe rules at load."""

from __future__ import annotations

import dataclasses

import pytest

from fpgalab.hil.gateware.config import HW_CONFIG, SIM_CONFIG, TWIN_CONFIG, SoCConfig
from fpgalab.hil.gateware.design import DesignLoadError, load
from fpgalab.hil.gateware.soc import LabSoC, VerilogPlatform, csr_json
from fpgalab.hil.trace import Probe, scope_layout
from tests.designs import PORTS

DESIGN = """
from litex.soc.interconnect import wishbone
from migen import Module, Signal

class Design(Module):
    def __init__(self):
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        self.state = Signal(3)
        self.flag = Signal()
        {probes}
"""
VERILOG = f"""{PORTS[:-3]},
    output reg [5:0] probe_level,
    output probe_busy
);
    always @(posedge clk) begin
        wb_ack <= wb_cyc & wb_stb & ~wb_ack;
        probe_level <= probe_level + 1;
    end
    assign probe_busy = wb_cyc;
endmodule
"""


def memory_map(config: SoCConfig = SIM_CONFIG, design: object = None) -> dict[str, object]:
    soc = LabSoC(VerilogPlatform(), dataclasses.replace(config, bridge="sim"), design=design)  # type: ignore[arg-type]
    soc.finalize()
    return csr_json(soc)


def python_design(probes: str) -> object:
    return load("d.py", DESIGN.format(probes=probes).encode())[0]


def test_the_base_soc_maps_its_scope() -> None:
    """The base SoC's map gives the host the bus signals (adr as wide as the user region's
    word offsets), the depth, the clock and where the CSRs and samples are."""
    layout = scope_layout(memory_map())
    assert layout is not None
    assert layout.signals[3] == Probe("adr", 22) and layout.probes == ()
    assert (layout.depth, layout.clock_hz) == (SIM_CONFIG.scope_depth, SIM_CONFIG.sys_clk_freq)
    assert layout.base == 0x0200_0000 and layout.control < 0x1_0000


def test_hardware_configs_have_a_smaller_scope() -> None:
    """Boards and their twins hold 512 samples (block RAM is scarce on an LFE5U-25F)."""
    assert HW_CONFIG.scope_depth == TWIN_CONFIG.scope_depth == 512
    layout = scope_layout(memory_map(HW_CONFIG))
    assert layout is not None and layout.depth == 512 and layout.clock_hz == 25_000_000


def test_no_scope_when_its_depth_is_zero() -> None:
    """``scope_depth=0`` builds the SoC without one; its map says so."""
    mem_map = memory_map(dataclasses.replace(SIM_CONFIG, scope_depth=0))
    assert scope_layout(mem_map) is None
    assert "scope" not in mem_map["memories"]  # type: ignore[operator]


def test_python_probes_reach_the_layout() -> None:
    """A Python design's ``probes`` dict: its signals (any Migen value), in order."""
    design = python_design('self.probes = {"state": self.state, "both": Cat(self.flag, self.state)}'
                           "\nfrom migen import Cat")  # fmt: skip
    layout = scope_layout(memory_map(design=design))
    assert layout is not None
    assert layout.probes == (Probe("state", 3), Probe("both", 4))


def test_verilog_probes_reach_the_layout() -> None:
    """A Verilog design's ``probe_<name>`` outputs are wired to the scope."""
    design, language = load("d.v", VERILOG.encode())
    assert language == "verilog"
    layout = scope_layout(memory_map(design=design))
    assert layout is not None
    assert layout.probes == (Probe("level", 6), Probe("busy", 1))


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        ("self.probes = [self.state]", "must be a dict of name -> signal, not a list"),
        ('self.probes = {"state": 3}', r"Design.probes\['state'\] must be a Migen signal, not a"),
        ('self.probes = {"State": self.state}', "probe name 'State' is not"),
        ('self.probes = {"we": self.state}', "probe name 'we' is taken by the bus signal"),
        ('self.probes = {f"p{i}": self.flag for i in range(17)}', "17 probes"),
        ('self.probes = {"a": Signal(60), "b": Signal(5)}', "65 bits in all: at most 64"),
        ('self.probes = {"e": self.state[3:3]}', "probe 'e' has no bits"),
    ],
)
def test_python_probes_break_the_rules(probes: str, message: str) -> None:
    """Each broken probe rule is a DesignLoadError at load, naming the file and the rule."""
    with pytest.raises(DesignLoadError, match=message) as raised:
        python_design(probes)
    assert str(raised.value).startswith("d.py: Design.probes")
