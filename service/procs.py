"""Child-process helpers shared by the commands that start other processes."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def child_dies_with_parent() -> None:
    """``preexec_fn``: the kernel sends SIGTERM to the child if we die (Linux only),
    so even a SIGKILLed ``fpgalab serve`` leaves no process behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
