"""The bitstream builder (``hil.build.ecp5``): platform names, configurations and cache keys
(fast), a design that does not elaborate (a few seconds, LiteX only), and real ECP5 builds
with YoWASP's yosys, nextpnr-ecp5 and ecppack (``slow``: run with ``--run-slow``).

The slow tests share one build cache per session (``FPGALAB_TEST_HW_BITSTREAMS`` keeps
one across runs), so the base SoC builds once. The first YoWASP run on a machine
compiles the tools' WebAssembly (~30 s for yosys), cached in ``~/.cache/YoWASP``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fpgalab.hil.build.ecp5 import Bitstream, BitstreamBuilder, tool_versions
from fpgalab.hil.build.errors import DesignBuildError, ToolchainError
from fpgalab.hil.build.yosys import LOOP_CHECK, ToolOutput, loop_message, synthesis_script
from fpgalab.hil.gateware.boundary import REFUSED
from fpgalab.hil.gateware.config import HW_CONFIG
from fpgalab.hil.gateware.platforms import PLATFORMS, UnknownPlatformError, get_platform
from tests.designs import PORTS, RING_OSCILLATOR
from tests.helpers import REPO

EXAMPLES = REPO / "docs" / "examples"
#: HW_CONFIG, its SRAM capped at what an LFE5U-25F holds next to the rest of the SoC.
CONFIG = dataclasses.replace(HW_CONFIG, sram_size=min(HW_CONFIG.sram_size, 0x1_0000))

#: Inverters made of ECP5 LUTs: yosys' check does not see through the primitives.
LUT_RING_OSCILLATOR = (
    PORTS
    + """    wire a, b, c;
    LUT4 #(.INIT(16'h5555)) l0 (.A(c), .B(1'b0), .C(1'b0), .D(1'b0), .Z(a));
    LUT4 #(.INIT(16'h5555)) l1 (.A(a), .B(1'b0), .C(1'b0), .D(1'b0), .Z(b));
    LUT4 #(.INIT(16'h5555)) l2 (.A(b), .B(1'b0), .C(1'b0), .D(1'b0), .Z(c));
    always @(posedge clk) begin
        wb_ack   <= wb_cyc & wb_stb & ~wb_ack;
        wb_dat_r <= {31'd0, c};
    end
endmodule
"""
)
#: A 16-bit division in one 40 ns cycle: nextpnr reaches ~17 MHz.
TOO_SLOW = (
    PORTS
    + """    reg [15:0] a, b;
    always @(posedge clk) begin
        wb_ack <= wb_cyc & wb_stb & ~wb_ack;
        if (wb_cyc & wb_stb & wb_we) begin
            if (wb_adr[0]) b <= wb_dat_w[15:0]; else a <= wb_dat_w[15:0];
        end
        wb_dat_r <= {16'd0, a / b};
    end
endmodule
"""
)
DOES_NOT_ELABORATE = b"""from migen import Module


class Design(Module):
    def __init__(self):
        self.bus = not_defined_anywhere
"""

Log = list[str]


def _toolchain_or_skip() -> None:
    try:
        tool_versions()
    except ToolchainError as exc:
        if os.environ.get("CI"):  # CI installs it: a missing toolchain is a failure there
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def bitstreams(tmp_path_factory: pytest.TempPathFactory) -> BitstreamBuilder:
    """The session's bitstream cache (shared by xdist workers: a build waits on the lock)."""
    _toolchain_or_skip()
    if configured := os.environ.get("FPGALAB_TEST_HW_BITSTREAMS"):
        return BitstreamBuilder(Path(configured), config=CONFIG)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return BitstreamBuilder(base / "hw-bitstreams", config=CONFIG)


@pytest.fixture(scope="session")
def base(bitstreams: BitstreamBuilder) -> Bitstream:
    """The base SoC's bitstream, built once per session."""
    return bitstreams.base(lambda line: None)


@pytest.fixture
def build(bitstreams: BitstreamBuilder) -> Callable[[str, bytes], tuple[Bitstream, Log]]:
    """Build a design file; returns its bitstream and the build's log."""

    def run(filename: str, source: bytes) -> tuple[Bitstream, Log]:
        log: Log = []
        return bitstreams.build(filename, source, log.append), log

    return run


def _fails(bitstreams: BitstreamBuilder, filename: str, source: bytes) -> tuple[str, Log]:
    log: Log = []
    with pytest.raises(DesignBuildError) as info:
        bitstreams.build(filename, source, log.append)
    assert "\n" not in str(info.value)
    return str(info.value), log


# Platforms, configurations, keys: no tool runs -----------------------------------------------


def test_unknown_platform_lists_the_valid_names(tmp_path: Path) -> None:
    """An unknown platform name fails with the names the lab knows."""
    with pytest.raises(UnknownPlatformError, match=r"'ulx4': choose colorlight_i5, radiona_ulx3s"):
        get_platform("ulx4")
    with pytest.raises(ValueError, match="unknown platform 'ulx4'"):
        BitstreamBuilder(tmp_path, platform="ulx4")


def test_unknown_device_lists_the_boards_devices(tmp_path: Path) -> None:
    """A device the board does not come with fails with the ones it does."""
    with pytest.raises(
        UnknownPlatformError, match="no device 'LFE5U-12F': choose LFE5U-25F, LFE5U-45F, LFE5U-85F"
    ):
        BitstreamBuilder(tmp_path, device="LFE5U-12F", config=CONFIG)
    with pytest.raises(ValueError, match=r"no device 'LFE5U-85F': choose LFE5U-25F$"):
        BitstreamBuilder(tmp_path, platform="colorlight_i5", device="LFE5U-85F", config=CONFIG)
    assert all(p.package == "CABGA381" for p in PLATFORMS.values())


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"sram_size": 0x4_0000}, "256 KiB SRAM alone needs 128 DP16KD block RAMs; "
                                  "the LFE5U-25F has 56"),
        ({"sys_clk_freq": 50_000_000}, "25 MHz oscillator, without a PLL"),
        ({"bridge": "sim"}, "over uartbone, not sim"),
    ],
)  # fmt: skip
def test_a_soc_the_board_cannot_hold_is_refused_up_front(
    tmp_path: Path, change: dict[str, object], error: str
) -> None:
    """A configuration that cannot work on the board fails at construction, saying why."""
    with pytest.raises(ValueError, match=error):
        BitstreamBuilder(tmp_path, config=dataclasses.replace(CONFIG, **change))
    big = dataclasses.replace(CONFIG, sram_size=0x4_0000)
    assert BitstreamBuilder(tmp_path, device="LFE5U-85F", config=big).device.block_rams == 208


def test_cache_key_covers_board_design_and_config(tmp_path: Path) -> None:
    """The key changes with the device, the design's bytes and type, and the SoC's config."""
    _toolchain_or_skip()
    small = BitstreamBuilder(tmp_path, device="LFE5U-25F", config=CONFIG)
    large = BitstreamBuilder(tmp_path, device="LFE5U-45F", config=CONFIG)
    faster = BitstreamBuilder(tmp_path, config=dataclasses.replace(CONFIG, uart_baudrate=115200))
    source = (EXAMPLES / "accumulator.v").read_bytes()
    key = small.key("a.v", source)
    assert key == small.key("renamed.v", source)
    assert len({key, large.key("a.v", source), faster.key("a.v", source),
                small.key("a.sv", source), small.key("a.v", source + b"\n"),
                small.key(None, None)}) == 6  # fmt: skip
    assert small.lookup(key) is None and small.lookup("../etc") is None
    assert small.by_sha256("0" * 64) is None and small.by_sha256("not a hash") is None


def test_yosys_script_gains_the_loop_check_and_loses_paths() -> None:
    """LiteX's script reads its sources by name and checks for loops before synthesis;
    a script LiteX would not write is refused."""
    folder = Path("/work/build-1/out/gateware")
    litex = (
        "verilog_defaults -push\nverilog_defaults -add -defer\n"
        f"read_verilog {folder}/ring.v\nread_verilog {folder}/lab_soc.v\n"
        "verilog_defaults -pop\nattrmap -tocase keep\n\nsynth_ecp5  -top lab_soc\n"
        "write_json  lab_soc.json"
    )
    lines = synthesis_script(litex, folder).splitlines()
    assert lines[2:4] == ["read_verilog ring.v", "read_verilog lab_soc.v"]
    at = lines.index("synth_ecp5  -top lab_soc")
    assert tuple(lines[at - len(LOOP_CHECK) : at]) == LOOP_CHECK
    with pytest.raises(ValueError, match="unexpected command: tee -o /etc/x stat"):
        synthesis_script(litex + "\ntee -o /etc/x stat", folder)
    with pytest.raises(ValueError, match="reads a file from elsewhere: /etc/passwd"):
        synthesis_script(litex.replace(f"{folder}/ring.v", "/etc/passwd"), folder)


def test_loop_message_quotes_the_loop_in_the_source() -> None:
    """yosys' loop report becomes one line quoting the statements in the loop."""
    report = [
        "Warning: found logic loop in module lab_soc:",
        "    cell $flatten\\user_design_i.$not$ring.v:14$268 ($not) source: ring.v:14.16-14.18",
        "      A[0] --> Y[0]",
        "    cell $flatten\\user_design_i.$not$ring.v:15$269 ($not) source: ring.v:15.16-15.18",
        "      A[0] --> Y[0]",
        "Warning: found logic loop in module lab_soc:",
        "    cell $flatten\\user_design_i.$not$ring.v:16$270 ($not) source: ring.v:16.16-16.18",
        "Found and reported 2 problems.",
    ]
    output = ToolOutput(lambda line: None)
    for line in report:
        output(line)
    assert loop_message(output, {"ring.v": RING_OSCILLATOR.encode()}) == (
        "combinational loop, refused (it can oscillate and overheat the board) (2 loops found; "
        "the first): ring.v:14 `assign a = ~c;` -> ring.v:15 `assign b = ~a;`"
    )
    assert output.errors == []


def test_loop_message_never_opens_a_file_yosys_names(tmp_path: Path) -> None:
    """A `line directive makes yosys name any path as a loop's source: the message names
    it and quotes nothing, whatever the file holds (a secret, /dev/zero, /proc/self/environ)."""
    secret = tmp_path / "secret"
    secret.write_text("line one\nTOP-SECRET-VALUE\n")
    report = ["Warning: found logic loop in module lab_soc:"]
    for path in (secret, Path("/dev/zero"), Path("/proc/self/environ")):
        report.append(f"    cell $not$x$1 ($not) source: {path}:2.1-2.9")
    output = ToolOutput(lambda line: None)
    for line in report:
        output(line)
    message = loop_message(output, {"ring.v": RING_OSCILLATOR.encode()})
    assert message == (
        "combinational loop, refused (it can oscillate and overheat the board): "
        f"{secret}:2 -> /dev/zero:2 -> /proc/self/environ:2"
    )


def test_design_that_does_not_elaborate_fails_as_the_designs_fault(
    bitstreams: BitstreamBuilder, base: Bitstream
) -> None:
    """A Python design that raises fails in elaboration with its own error; no tool runs."""
    error, log = _fails(bitstreams, "broken.py", DOES_NOT_ELABORATE)
    assert error == "broken.py:6: NameError: name 'not_defined_anywhere' is not defined"
    assert "Traceback (most recent call last):" in log
    assert not [line for line in log if "step 2/4" in line]


# Real builds ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_base_soc_builds_an_ecp5_bitstream(base: Bitstream) -> None:
    """The base SoC for a ULX3S 25F builds to a .bit for that part, carrying its identifier."""
    data = base.bit.read_bytes()
    assert data[:2] == b"\xff\x00" and b"Part: LFE5U-25F-6CABGA381\x00" in data[:64]
    assert 0 < data.index(b"\xff\xff\xbd\xb3") < 64  # the preamble, right after the header
    assert 50_000 < len(data) < 600_000
    assert hashlib.sha256(data).hexdigest() == base.sha256
    assert base.ident == "fpgalab hw base SoC" and base.filename is None
    assert base.design_source() is None
    assert base.csr()["constants"]["config_identifier"] == base.ident.lower()
    rom = (base.bit.parent / "lab_soc_mem.init").read_text().split()
    assert bytes(int(b, 16) for b in rom).split(b"\x00")[0].decode() == base.ident


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_same_build_again_is_a_cache_hit_that_runs_no_tool(
    bitstreams: BitstreamBuilder, base: Bitstream
) -> None:
    """Building the base SoC again returns the cached bitstream without running a step."""
    built = base.bit.stat().st_mtime_ns
    log: Log = []
    again = bitstreams.base(log.append)
    assert again.cached and again.sha256 == base.sha256 and again.bit == base.bit
    assert log == []  # nothing: whose build it was is not the caller's business
    assert base.bit.stat().st_mtime_ns == built


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_by_sha256_finds_the_build_of_a_bitstream(
    bitstreams: BitstreamBuilder, base: Bitstream
) -> None:
    """The hash of a .bit, or of the part a programmer streams (what a twin receives),
    leads back to its build."""
    data = base.bit.read_bytes()
    end = data.index(b"\xff", 2)  # openFPGALoader 0.10 sends the file from here on
    for sent in (data, data[end:], data[end + 1 :]):
        found = bitstreams.by_sha256(hashlib.sha256(sent).hexdigest())
        assert found is not None and found.key == base.key and found.ident == base.ident
    assert bitstreams.by_sha256(hashlib.sha256(data[end + 2 :]).hexdigest()) is None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_accumulator_example_builds(
    build: Callable[[str, bytes], tuple[Bitstream, Log]], bitstreams: BitstreamBuilder
) -> None:
    """The documented example builds; its bitstream carries its own identifier and keeps
    the design it was built from."""
    source = (EXAMPLES / "accumulator.py").read_bytes()
    bit, log = build("accumulator.py", source)
    assert bit.ident == f"fpgalab hw design {bit.key[:12]}" and bit.language == "python"
    assert bit.design_source() == source and bit.filename == "accumulator.py"
    assert bit.csr()["constants"]["config_identifier"] == bit.ident
    if not bit.cached:
        steps = [line for line in log if line.startswith("hw: step")]
        assert [s.split(":")[1] for s in steps] == [
            " step 1/4",
            " step 2/4",
            " step 3/4",
            " step 4/4",
        ]
        assert any(re.match(r"hw: \d+/24288 LUTs", line) for line in log)
    assert bitstreams.by_sha256(bit.sha256) == dataclasses.replace(bit, cached=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ring_oscillator_is_refused_naming_the_loop(
    bitstreams: BitstreamBuilder, base: Bitstream
) -> None:
    """A combinational loop fails synthesis with a message quoting the statements in it."""
    error, log = _fails(bitstreams, "ring.v", RING_OSCILLATOR.encode())
    assert error == (
        "combinational loop, refused (it can oscillate and overheat the board): "
        "ring.v:14 `assign a = ~c;` -> ring.v:15 `assign b = ~a;` -> ring.v:16 `assign c = ~b;`"
    )
    assert not [line for line in log if "step 3/4" in line]


#: A Python design that finds LiteX's platform object and asks it for the board's LEDs and
#: the configuration flash's pins (which survive a power cycle).
PIN_GRABBER = b"""
import gc
from migen import Module
from litex.build.generic_platform import GenericPlatform
from litex.soc.interconnect import wishbone

class Design(Module):
    def __init__(self):
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")

    def do_finalize(self):  # by now the SoC has made its platform
        platform = next(o for o in gc.get_objects() if isinstance(o, GenericPlatform))
        for i in range(8):
            self.comb += platform.request("user_led", i).eq(1)
        flash = platform.request("spiflash")
        self.comb += [flash.cs_n.eq(0), flash.mosi.eq(1)]
"""
#: Verilog that drives the configuration flash's clock through the ECP5's USRMCLK.
FLASH_CLOCK = (
    PORTS
    + """    USRMCLK flash_clock (.USRMCLKI(clk), .USRMCLKTS(1'b0));
    always @(posedge clk) begin
        wb_ack   <= wb_cyc & wb_stb & ~wb_ack;
        wb_dat_r <= 32'd0;
    end
endmodule
"""
)
#: A Python design with a PLL of its own.
OWN_PLL = b"""
from migen import ClockDomain, ClockSignal, Instance, Module, Signal
from litex.soc.interconnect import wishbone

class Design(Module):
    def __init__(self):
        self.bus = wishbone.Interface(data_width=32, address_width=32, addressing="word")
        self.clock_domains.cd_fast = ClockDomain(reset_less=True)
        fast, count = Signal(), Signal(32)
        self.specials += Instance("EHXPLLL", p_CLKI_DIV=1, p_CLKFB_DIV=4, p_CLKOP_DIV=6,
                                  i_CLKI=ClockSignal("sys"), i_CLKFB=fast, o_CLKOP=fast)
        self.comb += self.cd_fast.clk.eq(fast)
        self.sync.fast += count.eq(count + 1)
        self.comb += [self.bus.ack.eq(self.bus.cyc & self.bus.stb), self.bus.dat_r.eq(count)]
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_design_asking_for_pins_is_refused_before_synthesis(
    bitstreams: BitstreamBuilder, base: Bitstream
) -> None:
    """A design that takes the board's LEDs and flash pins from LiteX's platform is refused
    from the constraint file LiteX wrote, naming the pins; no tool runs."""
    error, log = _fails(bitstreams, "grabber.py", PIN_GRABBER)
    assert error.startswith(
        "the design reaches outside its slot: pin constraints the lab's SoC does not have: "
        '`LOCATE COMP "user_led0" SITE "B2"`'
    ), error
    assert error.endswith(REFUSED), error
    assert not [line for line in log if "step 2/4" in line]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("name", "source", "named"),
    [
        ("flashclock.v", FLASH_CLOCK.encode(), "1 USRMCLK (the configuration flash's clock)"),
        ("pll.py", OWN_PLL, "1 EHXPLLL (a PLL)"),
    ],
)
def test_a_primitive_outside_the_slot_is_refused_after_synthesis(
    bitstreams: BitstreamBuilder, base: Bitstream, name: str, source: bytes, named: str
) -> None:
    """A design instantiating the flash clock (Verilog) or a PLL (Migen) is refused from
    the synthesised netlist, naming the primitive; nothing is placed or loaded."""
    error, log = _fails(bitstreams, name, source)
    assert error == f"the design reaches outside its slot: {named}: {REFUSED}", error
    assert not [line for line in log if "step 3/4" in line]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_line_directives_naming_host_files_make_the_worker_read_nothing(
    bitstreams: BitstreamBuilder,
) -> None:
    """A loop whose statements claim (by `line directives) to come from the worker's
    environment, /dev/zero and a root-only file: refused at once, naming those places and
    quoting nothing of them."""
    lines = RING_OSCILLATOR.splitlines()
    for n, path in ((15, "/proc/self/environ"), (14, "/dev/zero"), (13, "/etc/shadow")):
        lines.insert(n, f'`line 1 "{path}" 0')
    # Reading /dev/zero would never end: the test's timeout is the check that it is not.
    error, _ = _fails(bitstreams, "lines.v", "\n".join(lines).encode())
    assert error == (
        "combinational loop, refused (it can oscillate and overheat the board): "
        "/etc/shadow:1 -> /dev/zero:1 -> /proc/self/environ:1"
    ), error
    for entry in Path("/proc/self/environ").read_bytes().split(b"\0")[:20]:
        assert entry.decode("utf-8", "replace") not in error


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_loop_of_lut_primitives_is_refused_by_place_and_route(
    bitstreams: BitstreamBuilder,
) -> None:
    """A loop yosys cannot see (ECP5 LUT cells) still fails: nextpnr's timing analysis."""
    error, _ = _fails(bitstreams, "lutring.v", LUT_RING_OSCILLATOR.encode())
    assert error == (
        "combinational loop, refused (it can oscillate and overheat the board): "
        "ERROR: Timing analysis failed due to combinational loops."
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_design_missing_timing_fails_with_nextpnrs_figure(bitstreams: BitstreamBuilder) -> None:
    """A design too slow for the SoC's clock fails place and route with the reached frequency."""
    error, _ = _fails(bitstreams, "divider.v", TOO_SLOW.encode())
    assert re.fullmatch(
        r"ERROR: Max frequency for clock '\S+': \d+\.\d\d MHz \(FAIL at 25\.00 MHz\)", error
    ), error
