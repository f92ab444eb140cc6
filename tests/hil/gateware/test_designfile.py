"""The design-file contract checks that run before any build (no toolchain needed)."""

from __future__ import annotations

import pytest

from fpgalab.hil.gateware.designfile import (
    DesignLoadError,
    check,
    verilog_module_body,
    verilog_probes,
)

PORTS = (
    "input clk, input rst, input [29:0] wb_adr, input [31:0] wb_dat_w, output [31:0] wb_dat_r,"
    " input [3:0] wb_sel, input wb_cyc, input wb_stb, input wb_we, output wb_ack"
)


def test_languages_by_extension() -> None:
    """.py is Python, .v and .sv are Verilog, in any case."""
    assert check("a.py", b"x = 1") == "python"
    assert check("a.V", f"module user_design({PORTS}); endmodule".encode()) == "verilog"
    assert check("a.sv", f"module user_design({PORTS}); endmodule".encode()) == "verilog"


@pytest.mark.parametrize(
    ("filename", "source", "message"),
    [
        ("design.txt", b"x", "unsupported file type .txt"),
        ("design", b"x", "unsupported file type (none)"),
        ("d.py", b"\xff\xfe", "not UTF-8"),
        ("d.v", b"module other(); endmodule", "no module `user_design` (it defines: other)"),
        ("d.v", b"// module user_design\nmodule x(); endmodule", "no module `user_design`"),
        ("d.v", b"module user_design(input clk); endmodule", "lacks port(s) rst, wb_adr"),
    ],
)
def test_rejected_before_building(filename: str, source: bytes, message: str) -> None:
    """Wrong type, wrong encoding, a missing top module or ports fail with a clear message."""
    with pytest.raises(DesignLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(filename, source)


def test_module_body_ignores_comments() -> None:
    """A port mentioned only in a comment does not count."""
    text = "module user_design(/* wb_err */ input clk);\nendmodule\nmodule b(input wb_err);"
    body = verilog_module_body(text, "user_design")
    assert body is not None
    assert "wb_err" not in body


def test_verilog_probes_are_output_ports_named_probe() -> None:
    """``probe_<name>`` outputs are the probes, with the widths declared, in order; other
    ports and internal wires are not."""
    text = (
        f"module user_design({PORTS}, output reg [7:0] probe_count, output probe_hit,\n"
        "    output wire [0:3] probe_a, probe_b);\n  wire probe_inner;\nendmodule"
    )
    assert verilog_probes("d.v", text) == {"count": 8, "hit": 1, "a": 4, "b": 4}
    non_ansi = (
        "module user_design(clk, probe_x);\n input clk;\n output reg [2:0] probe_x;\nendmodule"
    )
    assert verilog_probes("d.v", non_ansi) == {"x": 3}


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("input [3:0] probe_in", "probe port probe_in must be an output"),
        ("output [W-1:0] probe_w", r"probe port probe_w has the width \[W-1:0\]: give a probe's"),
        ("output probe_Bad", "probe name 'Bad' is not"),
        ("output probe_ack", "probe name 'ack' is taken by the bus signal"),
        ("output [40:0] probe_a, output [23:0] probe_b", "65 bits in all: at most 64"),
        (", ".join(f"output probe_p{i}" for i in range(17)), "17 probes: a design may"),
        ("output probe_" + "x" * 33, "is not"),
    ],
)
def test_verilog_probes_break_the_rules(ports: str, message: str) -> None:
    """Each broken probe rule fails the design's check with a message saying which."""
    source = f"module user_design({PORTS}, {ports}); endmodule".encode()
    with pytest.raises(DesignLoadError, match=message):
        check("d.v", source)


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("output [" + "9" * 5000 + ":0] probe_big", "probe port probe_big has the width '\\["),
        ("output [99999:0] probe_wide", "100000 bits in all: at most 64"),
        ("input probe_\x1b[2J" + "x" * 5000, r"probe port 'probe_\\x1b\[2Jxxx"),
    ],
)
def test_hostile_probe_ports_get_a_plain_answer(ports: str, message: str) -> None:
    """A width of thousands of digits, or a port name with escapes and no end, is refused
    as a design error (not an exception of the lab's), its text escaped and cut."""
    source = f"module user_design({PORTS}, {ports}); endmodule".encode()
    with pytest.raises(DesignLoadError, match=message) as refused:
        check("d.v", source)
    assert len(str(refused.value)) < 300 and "\x1b" not in str(refused.value)
