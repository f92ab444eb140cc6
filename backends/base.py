"""The backend protocol: what a lab backend does, with typed arguments and results.

    BackendError                 a backend call failed
    ├── DesignError              the user's design is at fault (does not build)
    ├── BoardError               the board misbehaved (crashed, stopped answering)
    └── BackendUnavailable       the lab's own machinery failed (tool missing, unreachable)

The worker maps each to the board's fate: a DesignError leaves the board's
health alone; a BoardError makes it ``unknown``; BackendUnavailable makes it ``bad``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fpgalab.hil.build.pipeline import DEFAULT_TIMEOUT as DEFAULT_BUILD_TIMEOUT
from fpgalab.hil.gateware.bus import Op, span_problem
from fpgalab.hil.gateware.designfile import FILENAME_RULE, filename_problem, language_of
from fpgalab.hil.lab.labfile import MAX_BOARDS, NAME_RULE, NUM_BOARDS, name_problem

__all__ = [
    "DEFAULT_BUILD_TIMEOUT",
    "FILENAME_RULE",
    "MAX_BOARDS",
    "NAME_RULE",
    "NUM_BOARDS",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "BoardError",
    "Build",
    "Design",
    "DesignError",
    "HealthReport",
    "LogFn",
    "Op",
    "TraceRequest",
    "TracedRun",
    "TransactResult",
    "Transaction",
    "Waveform",
    "default_data_dir",
    "filename_problem",
    "lab_data_dir",
    "name_problem",
    "span_problem",
]  # fmt: skip


def lab_data_dir() -> Path:
    """The lab's data folder when none is configured (``FPGALAB_DATA_DIR`` is read by the
    service's settings, which pass it down): ``$XDG_DATA_HOME/fpgalab`` (~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fpgalab"


def default_data_dir(backend: str) -> Path:
    """Where a backend keeps its builds when not told: its folder in ``lab_data_dir()``."""
    return lab_data_dir() / backend


#: Receives one line of build/program/reset output as it happens.
LogFn = Callable[[str], None]


class BackendError(Exception):
    """A backend call failed; the message is shown to the user as the job's error."""


class DesignError(BackendError):
    """The design does not elaborate, compile or fit: the user's to fix."""


class BoardError(BackendError):
    """The board crashed or stopped answering during the call."""


class BackendUnavailable(BackendError):
    """The lab's own machinery (toolchain, programmer, bridge) is not usable."""


@dataclass(frozen=True)
class Design:
    filename: str
    source: bytes

    @property
    def language(self) -> str:
        return language_of(self.filename)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source).hexdigest()


@dataclass(frozen=True)
class Build:
    """A built image, ready to program: ``key`` names it in the build cache."""

    key: str
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Transaction:
    """``op`` at consecutive word addresses from byte ``address``: write ``data``
    or read ``length`` words."""

    op: Op
    address: int
    data: tuple[int, ...] = ()
    length: int = 1

    @property
    def words(self) -> int:
        return len(self.data) if self.op is Op.WRITE else self.length

    def span_error(self) -> str | None:
        """Why the bus cannot take this transaction at all (None: it can)."""
        problem = span_problem(self.address, self.words)
        return f"bad address: {problem}" if problem else None


@dataclass(frozen=True)
class TransactResult:
    ok: bool
    data: list[int] = field(default_factory=list)
    #: Why the bus refused the access (bus error, timeout), when ``ok`` is false.
    error: str | None = None


@dataclass(frozen=True)
class TraceRequest:
    """What a traced run asks of the board's logic analyzer."""

    #: The signals to show, by name (None: all the analyzer captures).
    signals: tuple[str, ...] | None = None
    #: Largest waveform to keep (bytes); a bigger one is an error, not a waveform.
    max_bytes: int = 8 << 20


@dataclass(frozen=True)
class Waveform:
    """A capture of a run's window, as a file a waveform viewer opens."""

    format: str  # "vcd"
    data: bytes
    #: Samples the analyzer stored (it stores the cycles the user slot's bus is busy).
    samples: int
    #: The analyzer was full before the run ended: the waveform shows the run's start.
    full: bool
    signals: tuple[str, ...]


@dataclass(frozen=True)
class TracedRun:
    """A run's results, and its waveform or why there is none (the results stand
    either way)."""

    results: list[TransactResult]
    waveform: Waveform | None = None
    error: str | None = None


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    detail: str = ""


@runtime_checkable
class Backend(Protocol):
    """One lab of boards. Calls block; a worker runs each board's calls in turn."""

    name: str

    def build(self, design: Design, log: LogFn) -> Build:
        """Build ``design`` into an image for this lab's boards. Raises DesignError."""
        ...

    def program(self, board: int, build: Build, log: LogFn) -> None:
        """Load ``build`` onto ``board`` and check that it came up."""
        ...

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        """Run one Wishbone transaction; a bus error is a result, not an exception."""
        ...

    def transact_many(self, board: int, txns: Sequence[Transaction]) -> list[TransactResult]:
        """Run ``txns`` in order, as few round trips as the board allows; the first that
        fails is the last run (nothing after it reaches the bus) and the last result."""
        ...

    def transact_traced(
        self, board: int, txns: Sequence[Transaction], trace: TraceRequest
    ) -> TracedRun:
        """``transact_many`` with the board's logic analyzer armed before and read back
        after (``backends.trace``); a capture that fails is an error beside the results."""
        ...

    def reset(self, board: int, log: LogFn) -> None:
        """Put the base SoC back on ``board``, clearing what the last user left."""
        ...

    def health(self, board: int) -> HealthReport:
        """Check that ``board`` answers and runs a sane SoC."""
        ...

    def memory_map(self, board: int) -> dict[str, Any] | None:
        """The memory map (LiteX csr.json) of what is on ``board`` now, if known."""
        ...

    def close(self) -> None:
        """Stop whatever the backend started (simulators, bridges)."""
        ...
