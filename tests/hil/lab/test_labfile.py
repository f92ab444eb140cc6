"""The lab file: a good one becomes frozen board descriptions; a bad one is refused with
a message naming the board and the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fpgalab.hil.lab.labfile import EtherboneBridge, LabFileError, UartBridge, load_lab, parse_lab
from fpgalab.service.cli import main

GOOD = """
[lab]
baudrate = 921600

[[board]]
id = 0
bridge = { kind = "uart", port = "/dev/serial/by-id/usb-FTDI-D00123-if00-port0" }
program = { board = "ulx3s", ftdi_serial = "D00123" }
power_cycle = ["uhubctl", "-a", "cycle"]

[[board]]
id = 7
bridge = { kind = "etherbone", host = "192.168.1.57", max_words = 128, timeout = 2 }
program = { command = ["my-loader", "--file={bitstream}"], timeout = 30 }
"""

BOARD = """
[[board]]
id = 3
bridge = { kind = "uart", port = "socket://127.0.0.1:4000" }
program = { cable = "xvc-client", ip = "127.0.0.1", port = 2542 }
"""


def test_a_good_lab_file_describes_each_board() -> None:
    """Every field lands in the board's description, defaults fill the rest."""
    lab = parse_lab(GOOD, "lab.toml")
    assert lab.platform == "radiona_ulx3s" and lab.device == "LFE5U-25F"
    assert lab.board_ids == [0, 7]
    zero, seven = lab.boards[0], lab.boards[7]
    assert zero.bridge == UartBridge(
        port="/dev/serial/by-id/usb-FTDI-D00123-if00-port0", baudrate=921600, timeout=1.0
    )
    assert zero.program.argv(Path("/c/top.bit")) == [
        "openFPGALoader", "-b", "ulx3s", "--write-sram", "--ftdi-serial", "D00123", "/c/top.bit",
    ]  # fmt: skip
    assert zero.power_cycle == ("uhubctl", "-a", "cycle")
    assert seven.bridge == EtherboneBridge(host="192.168.1.57", port=1234, timeout=2.0,
                                           max_words=128)  # fmt: skip
    assert seven.program.argv(Path("/c/top.bit")) == ["my-loader", "--file=/c/top.bit"]
    assert seven.program.timeout == 30.0 and seven.power_cycle is None


def test_an_xvc_cable_becomes_openfpgaloader_arguments() -> None:
    """A network cable's ip and port go to openFPGALoader as --ip and --port."""
    lab = parse_lab(BOARD)
    assert lab.boards[3].program.argv(Path("b.bit")) == [
        "openFPGALoader", "-c", "xvc-client", "--write-sram", "--ip", "127.0.0.1", "--port",
        "2542", "b.bit",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("program", "flag"),
    [
        ('{ board = "ulx3s", args = ["-f"] }', "-f"),
        ('{ board = "ulx3s", args = ["--write-flash"] }', "--write-flash"),
        ('{ board = "ulx3s", args = ["-vf"] }', "-vf"),
        ('{ board = "ulx3s", args = ["--bulk-erase"] }', "--bulk-erase"),
        ('{ command = ["openFPGALoader", "-b", "ulx3s", "-f", "{bitstream}"] }', "-f"),
    ],
)
def test_a_programmer_that_would_write_the_flash_is_refused(program: str, flag: str) -> None:
    """The lab loads SRAM only: an argument that writes the configuration flash (which
    keeps a tenant's design across power cycles) makes the lab file invalid."""
    text = BOARD.replace('program = { cable = "xvc-client", ip = "127.0.0.1", port = 2542 }',
                         f"program = {program}")  # fmt: skip
    assert text != BOARD
    with pytest.raises(LabFileError, match=re.escape(f"{flag!r} would write the board's "
                                                     "configuration flash")):  # fmt: skip
        parse_lab(text, "lab.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lab]\n", "lab.toml: board: missing (expected an array of [[board]] tables)"),
        ("board = []\n", "lab.toml: no [[board]] in the lab"),
        ("[[board]\n", "lab.toml: not valid TOML: "),
        (BOARD.replace("id = 3", "id = 10000"),
         "lab.toml: board #1: id: 10000 is out of range 0-9999"),
        (BOARD + BOARD, "lab.toml: board 3: id: board 3 is described twice"),
        (BOARD.replace('port = "socket://127.0.0.1:4000"', "prt = 1"),
         "lab.toml: board 3: bridge: port: missing (expected a string)"),
        (BOARD.replace('kind = "uart"', 'kind = "usb"'),
         "lab.toml: board 3: bridge: kind: 'usb' is not a bridge: use uart or etherbone"),
        (BOARD.replace('cable = "xvc-client", ', 'cable = "x", board = "ulx3s", '),
         "lab.toml: board 3: program: give exactly one of board"),
        (BOARD.replace("port = 2542", "port = 2542, ftdi_seral = 'X'"),
         "lab.toml: board 3: program: unknown field 'ftdi_seral'"),
        (BOARD.replace("port = 2542", "port = 99999"),
         "lab.toml: board 3: program: port: 99999 is out of range 1-65535"),
        (BOARD.replace("[[board]]", '[lab]\nbaudrate = "fast"\n\n[[board]]'),
         "lab.toml: lab: baudrate: expected an integer, got 'fast'"),
        (BOARD.replace('4000"', '4000", baudrate = 115200'),
         "lab.toml: board 3: bridge: baudrate: 115200 differs from the lab's 1000000"),
        (BOARD + 'power_cycle = "reboot"\n',
         "lab.toml: board 3: power_cycle: expected a list of strings (a command), got 'reboot'"),
        (BOARD.replace('cable = "xvc-client", ip = "127.0.0.1", port = 2542', 'command = ["x"]'),
         "lab.toml: board 3: program: command: must contain {bitstream}"),
    ],
)  # fmt: skip
def test_a_bad_lab_file_is_refused_naming_board_and_field(text: str, message: str) -> None:
    """Each mistake is reported with the file, the board and the field it is in."""
    with pytest.raises(LabFileError) as caught:
        parse_lab(text, "lab.toml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_missing_lab_file_is_refused(tmp_path: Path) -> None:
    """A lab file that cannot be read says which file and why."""
    with pytest.raises(LabFileError, match=r"nope\.toml: cannot read the lab file"):
        load_lab(tmp_path / "nope.toml")


def test_the_worker_refuses_a_bad_lab_file_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`fpgalab worker --lab` with a bad file stops at once, status 2 (a configuration
    error), with the file's problem."""
    bad = tmp_path / "lab.toml"
    bad.write_text(BOARD.replace("id = 3", "id = 12000"))
    with pytest.raises(SystemExit) as stopped:
        main(["worker", "--backend", "hardware", "--lab", str(bad)])
    assert stopped.value.code == 2
    assert "board #1: id: 12000 is out of range 0-9999" in caplog.text
