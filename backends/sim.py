"""The ``sim`` backend: a lab of simulated boards, each a Verilator model of the lab's
SoC driven by cocotb (``sim.board``), built through a content-addressed cache
(``sim.verilator``).

A board whose simulator is not running is off; ``health`` and ``reset`` power it on
with the base SoC. Errors of ``sim`` are translated here, at the boundary, into the
protocol's: the user's design → DesignError, a dead or silent simulator →
BoardError, a missing toolchain → BackendUnavailable.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fpgalab.backends.base import (
    BackendError,
    BackendUnavailable,
    BoardError,
    Build,
    Design,
    DesignError,
    HealthReport,
    LogFn,
    Op,
    TracedRun,
    TraceRequest,
    Transaction,
    TransactResult,
    default_data_dir,
)
from fpgalab.backends.trace import run_traced
from fpgalab.hil.build.errors import DesignBuildError, ToolchainError
from fpgalab.hil.build.pipeline import DEFAULT_TIMEOUT
from fpgalab.hil.build.sandbox import NOBODY, Sandbox
from fpgalab.hil.gateware.bus import (
    IDENT_WORDS,
    decode_ident,
    ident_problem,
    scratch_pattern,
    scratch_problem,
)
from fpgalab.hil.gateware.config import IDENTIFIER, SCRATCH
from fpgalab.sim.board import BoardFailure, SimBoard, to_bytes
from fpgalab.sim.protocol import Command, Status
from fpgalab.sim.toolchain import ToolchainMissing, find
from fpgalab.sim.verilator import Builder, Model


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Map ``sim``'s errors onto the backend protocol's (the one place that does)."""
    try:
        yield
    except DesignBuildError as exc:
        raise DesignError(str(exc)) from exc
    except (ToolchainError, ToolchainMissing) as exc:
        raise BackendUnavailable(str(exc)) from exc
    except BoardFailure as exc:
        raise BoardError(str(exc)) from exc


class SimBackend:
    """A lab of simulated boards; safe to call for different boards from different
    threads (each board has its own lock, builds of one design share a file lock)."""

    name = "sim"

    def __init__(
        self,
        data_dir: Path | str | None = None,
        build_timeout: float | None = None,
        run_dir: Path | str | None = None,
        build_slots: int | None = None,
        sandbox: str = "bwrap",
        sandbox_uid: int = NOBODY,
    ) -> None:
        """``data_dir`` holds the build cache (shareable between processes);
        ``run_dir`` the folders of unsandboxed boards (default ``data_dir/boards``);
        ``build_slots``: builds at once on this host (None or 0: as many as fit);
        ``sandbox``, ``sandbox_uid``: how builds and simulators are confined."""
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir("sim")
        self.run_dir = Path(run_dir) if run_dir is not None else self.data_dir / "boards"
        if build_timeout is None:
            build_timeout = DEFAULT_TIMEOUT
        self.sandbox = Sandbox(sandbox, sandbox_uid)
        self.builder = Builder(self.data_dir, timeout=build_timeout, slots=build_slots or None,
                               sandbox=self.sandbox)  # fmt: skip
        self._boards: dict[int, SimBoard] = {}
        self._locks: dict[int, threading.RLock] = {}
        self._guard = threading.Lock()
        self._closed = False

    # Boards -------------------------------------------------------------------------------------

    def _board(self, board: int) -> tuple[SimBoard, threading.RLock]:
        with self._guard:
            if self._closed:
                raise BackendUnavailable("the sim backend is closed")
            if board not in self._boards:
                try:
                    tools = find()
                except ToolchainMissing as exc:
                    raise BackendUnavailable(f"simulation toolchain unavailable: {exc}") from exc
                self._boards[board] = SimBoard(board, self.run_dir / str(board), tools,
                                               self.sandbox)  # fmt: skip
                self._locks[board] = threading.RLock()
            return self._boards[board], self._locks[board]

    def _start(self, sim: SimBoard, model: Model, log: LogFn | None = None) -> None:
        if log:
            log(f"sim: starting board {sim.index}'s simulator ({model.ident})")
        sim.start(model)
        ident = self._identifier(sim)
        if problem := ident_problem(ident):
            sim.stop()
            raise BoardFailure(f"board {sim.index}: came up but {problem}")
        if log:
            log(f"sim: board {sim.index} up (pid {sim.pid}); identifier {ident!r}")

    @staticmethod
    def _identifier(sim: SimBoard) -> str:
        reply = sim.request(Command.READ, IDENTIFIER, IDENT_WORDS)
        if reply.status is not Status.OK:
            raise BoardFailure(f"board {sim.index}: identifier unreadable ({reply.status.name})")
        return decode_ident(reply.data)

    # The protocol -------------------------------------------------------------------------------

    def build(self, design: Design, log: LogFn) -> Build:
        with _translated():
            model = self.builder.build(design.filename, design.source, log)
        details = {"ident": model.ident, "language": model.language, "folder": str(model.folder)}
        return Build(key=model.key, cached=model.cached, details=details)

    def program(self, board: int, build: Build, log: LogFn) -> None:
        sim, lock = self._board(board)
        model = self.builder.lookup(build.key)
        if model is None:
            raise BackendUnavailable(f"build {build.key[:12]} is not in the build cache")
        with lock, _translated():
            self._start(sim, model, log)

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        return self.transact_many(board, [txn])[0]

    def transact_many(self, board: int, txns: Sequence[Transaction]) -> list[TransactResult]:
        """All of ``txns`` in one request to the simulator (``Command.BATCH``): one wake-up
        of it, not a round trip per transaction."""
        sim, lock = self._board(board)
        requests: list[tuple[Command, int, int, bytes]] = []
        refused = None
        for txn in txns:
            if refused := txn.span_error():
                break  # the ones before it run; it fails without reaching the bus
            if txn.op is Op.WRITE:
                requests.append((Command.WRITE, txn.address, txn.words, to_bytes(txn.data)))
            else:
                requests.append((Command.READ, txn.address, txn.words, b""))
        replies = []
        if requests:
            with lock, _translated():
                if sim.model is None and not sim.alive():
                    raise BoardFailure(f"board {board}: no simulator is running (reset the board)")
                replies = sim.batch(requests)
        results = [
            TransactResult(ok=True, data=reply.data)
            if reply.status is Status.OK
            else TransactResult(ok=False, data=reply.data, error=self._describe(reply, count))
            for reply, (_, _, count, _) in zip(replies, requests, strict=False)
        ]
        if refused and len(results) == len(requests) and all(r.ok for r in results):
            results.append(TransactResult(ok=False, error=refused))
        return results

    def transact_traced(
        self, board: int, txns: Sequence[Transaction], trace: TraceRequest
    ) -> TracedRun:
        """``txns`` with the SoC's logic analyzer around them (``backends.trace``)."""
        return run_traced(
            lambda t: self.transact_many(board, t), self.memory_map(board), txns, trace
        )

    def _describe(self, reply: Any, count: int) -> str:
        where = f"{reply.failed_at:#010x} (word {reply.done} of {count})"
        if reply.status is Status.TIMEOUT:
            cycles = self.builder.soc.bus_timeout
            return f"bus timeout at {where}: no slave answered within {cycles} cycles"
        if reply.status is Status.BUS_ERROR:
            return f"bus error at {where}"
        return f"the board refused the request at {where}"

    def reset(self, board: int, log: LogFn) -> None:
        sim, lock = self._board(board)
        with lock, _translated():
            log(f"sim: stopping board {board}'s simulator")
            sim.stop()
            self._start(sim, self.builder.base(log), log)

    def health(self, board: int) -> HealthReport:
        sim, lock = self._board(board)
        with lock:
            try:
                with _translated():
                    if not sim.alive():
                        # Off (never started, or crashed): power it on with the base SoC.
                        self._start(sim, self.builder.base(lambda line: None))
                    ident = self._identifier(sim)
                    scratch = self._scratch_check(sim)
            except BackendUnavailable:
                raise
            except BackendError as exc:
                return HealthReport(ok=False, detail=str(exc).splitlines()[0])
        if problem := ident_problem(ident):
            return HealthReport(ok=False, detail=problem)
        if scratch:
            return HealthReport(ok=False, detail=scratch)
        return HealthReport(ok=True, detail=f"{ident}; scratch ok")

    @staticmethod
    def _scratch_check(sim: SimBoard) -> str:
        """Write a pattern to ctrl's scratch, read it back, restore it; '' if all is well."""
        before = sim.request(Command.READ, SCRATCH, 1)
        if before.status is not Status.OK:
            return f"scratch unreadable ({before.status.name})"
        pattern = scratch_pattern(before.data[0])
        sim.request(Command.WRITE, SCRATCH, 1, to_bytes([pattern]))
        after = sim.request(Command.READ, SCRATCH, 1)
        sim.request(Command.WRITE, SCRATCH, 1, to_bytes(before.data))
        return scratch_problem(pattern, after.data)

    def memory_map(self, board: int) -> dict[str, Any] | None:
        sim, lock = self._board(board)
        with lock:
            model = sim.model
        return model.csr() if model is not None else None

    def close(self) -> None:
        with self._guard:
            self._closed = True
            boards = list(self._boards.items())
        for index, sim in boards:
            with self._locks[index]:
                sim.stop()

    # Extras (benchmarks, tests) ------------------------------------------------------------------

    def board(self, board: int) -> SimBoard:
        """The board's simulator handle (for raw requests in benchmarks and tests)."""
        return self._board(board)[0]
