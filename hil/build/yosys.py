"""What the lab reads of yosys, and what it adds to LiteX's yosys script: the script
checked line by line and pointed at the gateware folder, a combinational-loop check
before synthesis, and yosys' output watched for its errors and loops.

A loop's message quotes the sources the worker handed to yosys (held in memory), never a
file yosys names: a `line directive can make it name any path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from fpgalab.hil.build.errors import LogFn

__all__ = ["LOOP_CHECK", "LOOP_REFUSED", "ToolOutput", "loop_message", "synthesis_script"]

TOP = "lab_soc"
#: Inserted into LiteX's yosys script before synthesis: ``check`` on the design as
#: written (processes turned into cells but not optimised, which could fold a loop away;
#: hierarchy flattened, so loops across modules show) reports every combinational loop.
#: Synthesis then starts again from the sources as LiteX meant.
LOOP_CHECK = ("design -save fpgalab_sources", f"hierarchy -top {TOP}", "proc -noopt",
              "flatten", "check", "design -load fpgalab_sources")  # fmt: skip
#: The commands a LiteX yosys script for ECP5 has (anything else was not LiteX's doing).
YOSYS_COMMANDS = ("verilog_defaults", "read_verilog", "attrmap", "synth_ecp5", "write_json")
LOOP_REFUSED = "combinational loop, refused (it can oscillate and overheat the board)"


class ToolOutput:
    """A tool's output on its way to the log, with what the build needs kept aside: its
    ERROR lines, the first combinational loop yosys' ``check`` reports, a wasm trap."""

    def __init__(self, log: LogFn) -> None:
        self.log = log
        self.errors: list[str] = []
        self.loops = 0
        self.loop_lines: list[str] = []
        self.trap = ""
        self._in_loop = False

    def __call__(self, line: str) -> None:
        self.log(line)
        if "found logic loop" in line:
            self.loops += 1
            self._in_loop = self.loops == 1
            return
        if self._in_loop and line.startswith(" ") and len(self.loop_lines) < 200:
            self.loop_lines.append(line)
            return
        self._in_loop = False
        if "ERROR:" in line and len(self.errors) < 10:
            self.errors.append(line.strip())
        elif match := re.search(r"wasm trap: (.*)", line):
            self.trap = match[1].strip()


def loop_message(output: ToolOutput, sources: Mapping[str, bytes], shown: int = 4) -> str:
    """One line naming the loop: the source lines of its cells, quoted from ``sources``
    (the files as handed to yosys, held by the worker). A place yosys names in any other
    file (a `line directive can name any path) is named, never opened."""
    places: list[str] = []
    for line in output.loop_lines:
        cell = re.match(r"\s+cell (\S+)", line)
        if cell is None:
            continue
        where = re.search(r"source: ([^:|\s]+):(\d+)", line)
        if where is None:
            place = cell[1]
        else:
            place = f"{where[1][:80]}:{where[2][:9]}"
            if where[1] in sources:
                lines = sources[where[1]].decode("utf-8", "replace").splitlines()
                number = int(where[2])
                if 0 < number <= len(lines):
                    text = " ".join(lines[number - 1].split())
                    place += f" `{text[:60]}{'...' if len(text) > 60 else ''}`"
        if place not in places:
            places.append(place)
    chain = " -> ".join(places[:shown]) + (" -> ..." if len(places) > shown else "")
    many = f" ({output.loops} loops found; the first)" if output.loops > 1 else ""
    return f"{LOOP_REFUSED}{many}: {chain or 'see the log'}"


def synthesis_script(litex: str, elaborated: Path) -> str:
    """LiteX's yosys script for the build's gateware folder: sources by their names (the
    tools see that folder only), and the loop check before synthesis. Raises ValueError
    if the script is not the one LiteX writes (the child may have been tampered with)."""
    lines: list[str] = []
    for line in litex.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] not in YOSYS_COMMANDS:
            raise ValueError(f"LiteX's yosys script has an unexpected command: {line.strip()}")
        if words[0] == "read_verilog":
            path = Path(words[-1])
            if path.parent != elaborated:
                raise ValueError(f"LiteX's yosys script reads a file from elsewhere: {path}")
            line = " ".join([*words[:-1], path.name])
        elif words[0] == "synth_ecp5":
            lines.extend(LOOP_CHECK)
        lines.append(line)
    if not any(line.startswith("synth_ecp5") for line in lines):
        raise ValueError("LiteX's yosys script does not synthesise (no synth_ecp5)")
    return "\n".join(lines) + "\n"
