"""The design-file contract checks that run before any build (no toolchain needed)."""

from __future__ import annotations

import pytest

from fpgalab.hil.gateware.designfile import DesignLoadError, check, verilog_module_body

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
