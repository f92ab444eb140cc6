"""How a build fails, for both labs: the errors a builder raises, and the one-line words
that say which of a step's limits ended it.

    BuildError              a build failed; its message is the job's one-line error
    ├── DesignBuildError    the user's design is at fault (does not load, elaborate, compile)
    └── ToolchainError      the lab's own machinery failed (a tool missing, the base SoC)
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fpgalab.hil.procs import Finished

LogFn = Callable[[str], None]

#: What a signal that ends a build step says about its limits.
LIMIT_SIGNALS = {"SIGKILL": " (a resource limit?)", "SIGXCPU": " (its CPU time limit)",
                 "SIGXFSZ": " (a file grew past its size limit)"}  # fmt: skip


class BuildError(Exception):
    """A build failed; the message is one line for the job's ``error``."""


class DesignBuildError(BuildError):
    """The user's design is at fault (does not load, elaborate or compile)."""


class ToolchainError(BuildError):
    """The lab's own machinery failed (tool missing, the base SoC does not build)."""


def overflow_message(step: str, max_output: int) -> str:
    return f"{step} printed more than {max_output / (1 << 20):g} MiB of output and was stopped"


def with_bound(message: str, done: Finished) -> str:
    """``message``, and which bound of its whole process tree the step hit, if one."""
    return f"{message}; {done.bound}" if done.bound else message


def last_error_line(lines: list[str]) -> str:
    """The last line of a step's output that looks like its error, '' if none does."""
    for line in reversed(lines):
        if re.search(r"error|Error|ERROR|Killed|memory", line):
            return line.strip()
    return ""


def stopped(step: str, done: Finished) -> str:
    """Why ``step`` ended that way, when it said nothing better itself: its exit status or
    signal, the bound it hit (or the limit a signal suggests), its last error line."""
    how = f"signal {done.signal_name}" if done.signal_name else f"status {done.returncode}"
    if done.bound:
        return f"{step} stopped with {how}: {done.bound}"
    last = last_error_line(done.tail)
    limit = LIMIT_SIGNALS.get(done.signal_name or "", "")
    return f"{step} stopped with {how}{limit}" + (f": {last}" if last else "")
