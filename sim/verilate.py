"""Build step 2, run as a child (``python -m sim.verilate request.json``): refuse a design
with a combinational loop, then compile the Verilog into a Verilator model with cocotb's
Python runner. Output (Verilator's messages, make, the compiler) goes to stdout as it
happens; a refusal or a failure ends with a ``%Error`` line (exit status 2).

Loops: Verilator reports circular combinational logic as ``UNOPTFLAT``, a warning, and
the model still builds (``-Wno-fatal``). cocotb's runner passes ``--public-flat-rw``,
which keeps every signal whole, so a vector whose bits feed each other without a real
cycle (a ripple carry written as ``c[i+1] = f(c[i])``) is reported too. The check is
therefore a separate Verilator run without it, which only translates to C++: whatever
``UNOPTFLAT`` it still reports is a real loop. LiteX's SoC itself has none.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from fpgalab.hil.build.sandbox import apply_limits

#: LiteX's Verilog draws ~150 lint warnings (COMBDLY, WIDTH*) that say nothing to a
#: user: silence them in the SoC's file only, so the user's own Verilog keeps its.
LINT_CONFIG = """`verilator_config
lint_off -file "*/{top}.v"
lint_off -rule COMBDLY -file "*/{top}.v"
lint_off -rule WIDTH -file "*/{top}.v"
lint_off -rule CASEINCOMPLETE -file "*/{top}.v"
"""
LOOP_WARNING = "%Warning-UNOPTFLAT:"
LOOP_REFUSED = "combinational loop, refused (it can oscillate)"


def find_loops(top: str, sources: list[str], scratch: Path) -> list[list[str]]:
    """Verilator's ``UNOPTFLAT`` warnings for the design (each a list of lines), from a
    translation to C++ in ``scratch`` without public signals. Empty if it has no loop,
    or if Verilator fails (the real build then reports why)."""
    verilator = shutil.which("verilator") or "verilator"
    cmd = [verilator, "--cc", "--top-module", top, "-Wno-fatal", "--Mdir", str(scratch), *sources]
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"verilate: the loop check did not run: {exc}", flush=True)
        return []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        print(f"verilate: the loop check stopped with status {done.returncode}", flush=True)
        return []
    loops: list[list[str]] = []
    current: list[str] | None = None
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("%"):
            current = [line] if line.startswith(LOOP_WARNING) else None
            if current is not None:
                loops.append(current)
        elif current is not None:
            current.append(line)
    return loops


def loop_error(loop: list[str], count: int, top: str) -> str:
    """The ``%Error`` line for a loop: where, and the signals around it."""
    where = loop[0][len(LOOP_WARNING) :].split(": Signal", 1)[0].strip()
    names: list[str] = []
    for line in loop[1:]:
        match = re.search(r"Example path: (\S+)", line)
        # The path alternates signals and the statements between them (ASSIGNW, ALWAYS);
        # Verilator's own temporaries are named __V...
        if match and "." in match[1] and "__V" not in match[1]:
            names.append(match[1].removeprefix(f"{top}."))
    more = f" ({count} loops found; the first)" if count > 1 else ""
    return f"%Error: {where}: {LOOP_REFUSED}{more}: {' -> '.join(names) or 'see the log'}"


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    apply_limits(request["limits"])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")

    from cocotb_tools.runner import VerilatorControlFile, get_runner

    top = request["top"]
    loops = find_loops(top, request["sources"], Path(request["build_dir"]) / "loop-check")
    if loops:
        for line in (line for loop in loops for line in loop):
            print(line, flush=True)
        print(loop_error(loops[0], len(loops), top), flush=True)
        return 2
    lint = Path(request["build_dir"]) / "lint.vlt"  # src is read-only here
    lint.parent.mkdir(parents=True, exist_ok=True)
    lint.write_text(LINT_CONFIG.format(top=top))
    sources: list[object] = [VerilatorControlFile(lint), *request["sources"]]
    runner = get_runner("verilator")
    try:
        runner.build(
            sources=sources,  # type: ignore[arg-type]
            hdl_toplevel=top,
            build_dir=request["build_dir"],
            build_args=["-Wno-fatal", *request.get("args", [])],
        )
    except (RuntimeError, SystemExit) as exc:
        print(f"verilate: {exc}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
