"""Loading a bitstream into a board's FPGA (SRAM, not flash) with the lab file's command,
normally openFPGALoader, under a timeout, its output streamed into the job's log.

openFPGALoader exits 0 even when the FPGA never reports DONE: a load is only trusted
once the backend has read the new SoC's identifier back over the bridge.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from fpgalab.hil import procs
from fpgalab.hil.lab.labfile import Programmer

LogFn = Callable[[str], None]


class ProgramError(Exception):
    """The programmer ran and failed (no cable, no board, a failed load, a timeout)."""


class ProgrammerMissing(Exception):
    """The programming tool is not installed on this host."""


def run_command(
    argv: list[str], timeout: float, log: LogFn, cwd: Path, what: str
) -> procs.Finished:
    """Run ``argv`` with its output in ``log``; raises ProgrammerMissing or ProgramError."""
    tool = argv[0]
    if shutil.which(tool) is None:
        raise ProgrammerMissing(f"{what}: `{tool}` is not installed on this host")
    cwd.mkdir(parents=True, exist_ok=True)
    name = Path(tool).name
    done = procs.run(
        argv, cwd=cwd, env=procs.clean_env({"HOME": str(cwd)}), timeout=timeout, log=log,
        prefix=f"{name}: ",
    )  # fmt: skip
    if done.timed_out:
        raise ProgramError(f"{what}: `{name}` took longer than {timeout:.0f} s and was killed")
    if done.returncode != 0:
        how = f"signal {done.signal_name}" if done.signal_name else f"status {done.returncode}"
        last = _last_message(done.tail)
        raise ProgramError(f"{what}: `{name}` failed with {how}" + (f": {last}" if last else ""))
    return done


def load(programmer: Programmer, bitstream: Path, log: LogFn, cwd: Path) -> None:
    """Load ``bitstream`` with ``programmer``; raises ProgramError or ProgrammerMissing."""
    argv = programmer.argv(bitstream)
    log(f"program: {' '.join(argv)}")
    run_command(argv, programmer.timeout, log, cwd, "programming")


def _last_message(lines: list[str]) -> str:
    """The tool's most telling line: the last error, else the last line."""
    text = [line.strip() for line in lines if line.strip()]
    for line in reversed(text):
        if any(word in line.lower() for word in ("error", "fail", "unable", "not found")):
            return line
    return text[-1] if text else ""
