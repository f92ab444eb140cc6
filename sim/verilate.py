"""Build step 2, run as a child (``python -m sim.verilate request.json``): compile the
Verilog into a Verilator model with cocotb's Python runner. Output (Verilator's
messages, make, the compiler) goes to stdout as it happens.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from sim.sandbox import apply_limits

#: LiteX's Verilog draws ~150 lint warnings (COMBDLY, WIDTH*) that say nothing to a
#: user: silence them in the SoC's file only, so the user's own Verilog keeps its.
LINT_CONFIG = """`verilator_config
lint_off -file "*/{top}.v"
lint_off -rule COMBDLY -file "*/{top}.v"
lint_off -rule WIDTH -file "*/{top}.v"
lint_off -rule CASEINCOMPLETE -file "*/{top}.v"
"""


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    apply_limits(request["limits"])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")

    from cocotb_tools.runner import VerilatorControlFile, get_runner

    top = request["top"]
    src = Path(request["src"])
    lint = src / "lint.vlt"
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
