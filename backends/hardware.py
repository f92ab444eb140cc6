"""The ``hardware`` backend: real boards named in a lab file (``hil.lab.labfile``), reached
through LiteX host bridges (``hil.lab.uartbone``, ``hil.lab.etherbone``), programmed with
openFPGALoader (``hil.lab.programmer``), with bitstreams from the open ECP5 toolchain in a
content-addressed cache (``hil.build.ecp5``).

- **build**: the lab's SoC for the lab's platform, with the user's design in its slot.
- **program**: load the bitstream into SRAM, then confirm the load by reading the new
  SoC's identifier over the bridge (openFPGALoader exits 0 even without DONE).
- **transact**: the user's transfer and a read of ``ctrl_bus_errors`` in one round trip:
  UARTBone never reports a bus error, the counter does.
- **reset**: load the base SoC's bitstream (built once, cached); a reflash clears the
  block RAM, so nothing of the last session stays readable.
- **health**: an idle board must run the base SoC: identifier and scratch register over
  the bridge; anything else is reloaded with the base SoC and checked again.

Errors of ``hil`` are translated here, at the boundary: the user's design →
DesignError, a board or cable that fails → BoardError, missing tools → BackendUnavailable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
from fpgalab.hil.build.ecp5 import Bitstream, BitstreamBuilder
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
from fpgalab.hil.gateware.config import BUS_ERRORS, HW_CONFIG, IDENTIFIER, SCRATCH
from fpgalab.hil.lab.bridge import Bridge, BridgeError, Read, Write
from fpgalab.hil.lab.etherbone import Etherbone
from fpgalab.hil.lab.labfile import BoardSpec, EtherboneBridge, Lab, LabFileError, load_lab
from fpgalab.hil.lab.programmer import ProgramError, ProgrammerMissing, load, run_command
from fpgalab.hil.lab.uartbone import UARTBone

#: Seconds a board may take after a load until its identifier reads back right.
CONFIRM_TIMEOUT = 10.0
#: Words in one UARTBone write frame (its length field is a byte).
FRAME_WORDS = 255
#: What a bus timeout answers to a UARTBone read.
ALL_ONES = 0xFFFF_FFFF


@contextlib.contextmanager
def _translated(board: int | None = None) -> Iterator[None]:
    """Map ``hil``'s errors onto the backend protocol's (the one place that does)."""
    where = f"board {board}: " if board is not None else ""
    try:
        yield
    except DesignBuildError as exc:
        raise DesignError(str(exc)) from exc
    except (ToolchainError, ProgrammerMissing) as exc:
        raise BackendUnavailable(f"{where}{exc}") from exc
    except (BridgeError, ProgramError) as exc:
        raise BoardError(f"{where}{exc}") from exc


def open_bridge(spec: BoardSpec) -> Bridge:
    """The host end of ``spec``'s bridge (it connects on first use)."""
    link = spec.bridge
    if isinstance(link, EtherboneBridge):
        return Etherbone(link.host, link.port, timeout=link.timeout, max_words=link.max_words)
    return UARTBone(link.port, baudrate=link.baudrate, timeout=link.timeout)


def _with_error_counts(txn: Transaction) -> list[Read | Write]:
    """``txn`` as bridge operations, each write frame followed by a read of the bus
    error counter: the read makes it a round trip, so the board's receive FIFO never
    holds more than one frame while a slow slave keeps the bridge waiting."""
    if txn.op is Op.READ:
        return [Read(txn.address, txn.length), Read(BUS_ERRORS, 1)]
    ops: list[Read | Write] = []
    for first in range(0, len(txn.data), FRAME_WORDS):
        ops.append(Write(txn.address + 4 * first, txn.data[first : first + FRAME_WORDS]))
        ops.append(Read(BUS_ERRORS, 1))
    return ops


@dataclass
class _Board:
    spec: BoardSpec
    bridge: Bridge
    run_dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: What the board runs, as far as we know (None: unknown, e.g. after a failure).
    current: Bitstream | None = None
    #: ``ctrl_bus_errors`` as last read.
    bus_errors: int = 0


class HardwareBackend:
    """The boards of one lab file; calls for different boards may run in parallel."""

    name = "hardware"

    def __init__(
        self,
        lab_file: Path | str | None = None,
        data_dir: Path | str | None = None,
        build_timeout: float | None = None,
        lab: Lab | None = None,
        build_slots: int | None = None,
        sandbox: str = "bwrap",
        sandbox_uid: int = NOBODY,
    ) -> None:
        """``lab_file`` (or ``lab``, already read) names the boards; the rest is what every
        backend is made with (``fpgalab.service.cli.backend_options``)."""
        if lab is None:
            if not lab_file:
                raise BackendUnavailable(
                    "the hardware backend needs a lab file: --lab FILE or FPGALAB_LAB_FILE"
                )
            try:
                lab = load_lab(lab_file)
            except LabFileError as exc:
                raise BackendUnavailable(str(exc)) from exc
        self.lab = lab
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir("hardware")
        config = dataclasses.replace(HW_CONFIG, uart_baudrate=lab.baudrate)
        try:
            self.builder = BitstreamBuilder(
                self.data_dir, platform=lab.platform, device=lab.device, config=config,
                timeout=build_timeout if build_timeout is not None else DEFAULT_TIMEOUT,
                slots=build_slots or None, sandbox=Sandbox(sandbox, sandbox_uid),
            )  # fmt: skip
        except (ValueError, ToolchainError) as exc:
            raise BackendUnavailable(f"{lab.source}: {exc}") from exc
        self._boards = {
            spec.id: _Board(spec, open_bridge(spec), self.data_dir / "boards" / str(spec.id))
            for spec in lab.boards.values()
        }

    def _board(self, board: int) -> _Board:
        slot = self._boards.get(board)
        if slot is None:
            raise BackendUnavailable(
                f"board {board} is not in the lab file {self.lab.source} "
                f"(it has boards {', '.join(map(str, self.lab.board_ids))})"
            )
        return slot

    # The protocol -------------------------------------------------------------------------------

    def build(self, design: Design, log: LogFn) -> Build:
        with _translated():
            bit = self.builder.build(design.filename, design.source, log)
        details = {"ident": bit.ident, "bitstream": str(bit.bit), "sha256": bit.sha256}
        return Build(key=bit.key, cached=bit.cached, details=details)

    def program(self, board: int, build: Build, log: LogFn) -> None:
        slot = self._board(board)
        bit = self.builder.lookup(build.key)
        if bit is None:
            raise BackendUnavailable(f"build {build.key[:12]} is not in the build cache")
        with slot.lock, _translated(board):
            self._load(slot, bit, log)

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        return self.transact_many(board, [txn])[0]

    def transact_many(self, board: int, txns: Sequence[Transaction]) -> list[TransactResult]:
        """Each transaction goes out with a read of ``ctrl_bus_errors`` (one bridge ``run``:
        UARTBone streams the write frames with the read, Etherbone puts both in one
        record), and the next goes out once that reply says it did not fail: a bus error
        stops the list before anything after it reaches the bus. That costs no round trip
        on UARTBone, whose every read ends one anyway (the counter's included); Etherbone
        could pack consecutive reads into one record, but not stop after the one that
        failed. The board's lock is held for the whole list."""
        results: list[TransactResult] = []
        slot = self._board(board)
        with slot.lock, _translated(board):
            for txn in txns:
                results.append(self._transact(slot, txn))
                if not results[-1].ok:
                    break
        return results

    def transact_traced(
        self, board: int, txns: Sequence[Transaction], trace: TraceRequest
    ) -> TracedRun:
        """``txns`` with the SoC's logic analyzer around them (``backends.trace``)."""
        return run_traced(
            lambda t: self.transact_many(board, t), self.memory_map(board), txns, trace
        )

    def _transact(self, slot: _Board, txn: Transaction) -> TransactResult:
        """One transaction and its error count (the caller holds the board's lock)."""
        if refused := txn.span_error():
            return TransactResult(ok=False, error=refused)
        board = slot.spec.id
        if slot.current is None:
            raise BoardError(f"board {board}: its SoC is unknown after a failure (reset it)")
        try:
            replies = slot.bridge.run(_with_error_counts(txn))
        except BridgeError:
            slot.current = None
            raise
        errors = replies[-1][0]
        rose = (errors - slot.bus_errors) & 0xFFFF_FFFF
        if rose > txn.words:  # more failures than accesses: the reply is not the board's
            slot.current = None
            raise BoardError(
                f"board {board}: implausible reply over {slot.bridge.describe()}: "
                f"ctrl_bus_errors went from {slot.bus_errors} to {errors} during a "
                f"{txn.words}-word transfer (a garbled link?)"
            )
        slot.bus_errors = errors
        data = replies[0] if txn.op is Op.READ else []
        if not rose:
            return TransactResult(ok=True, data=data)
        return self._failed(txn, data, rose)

    def _failed(self, txn: Transaction, data: list[int], failed: int) -> TransactResult:
        """UARTBone cannot say which access failed; a bus timeout reads as all ones, so a
        read names (and stops its data at) its first all-ones word, as the simulated lab
        does; a write can only say how many accesses failed."""
        cycles = self.builder.config.bus_timeout
        count = txn.words
        if txn.op is Op.READ and ALL_ONES in data:
            first = data.index(ALL_ONES)
            error = (
                f"bus timeout at {txn.address + 4 * first:#010x} (word {first} of {count}): "
                f"no slave answered within {cycles} cycles"
            )
            if failed > 1:
                error += f" ({failed} of {count} accesses timed out)"
            return TransactResult(ok=False, data=data[:first], error=error)
        error = (
            f"bus error during the transfer at {txn.address:#010x}: {failed} of {count} "
            f"accesses ended in a bus timeout ({cycles} cycles); UARTBone does not say which"
        )
        return TransactResult(ok=False, data=data, error=error)

    def reset(self, board: int, log: LogFn) -> None:
        slot = self._board(board)
        with _translated(board):
            base = self.builder.base(log)
        with slot.lock, _translated(board):
            try:
                self._load(slot, base, log)
            except (ProgramError, BridgeError) as exc:
                if slot.spec.power_cycle is None:
                    raise
                log(f"hardware: {exc}; power-cycling board {board} and trying once more")
                self._power_cycle(slot, log)
                self._load(slot, base, log)

    def health(self, board: int) -> HealthReport:
        slot = self._board(board)
        with _translated(board):
            base = self.builder.base(lambda line: None)
        with slot.lock:
            problem = self._check(slot, base)
            if not problem:
                return HealthReport(ok=True, detail=f"{base.ident}; scratch ok")
            try:
                with _translated(board):
                    self._load(slot, base, lambda line: None)
            except BackendUnavailable:
                raise
            except BackendError as exc:
                return HealthReport(ok=False, detail=f"{problem}; reloading it: {exc}")
            again = self._check(slot, base)
        if again:
            return HealthReport(ok=False, detail=f"{again} (after reloading the base SoC)")
        return HealthReport(ok=True, detail=f"{base.ident}; scratch ok (reloaded: {problem})")

    def memory_map(self, board: int) -> dict[str, Any] | None:
        slot = self._board(board)
        with slot.lock:
            current = slot.current
        return current.csr() if current is not None else None

    def close(self) -> None:
        for slot in self._boards.values():
            with slot.lock:
                slot.bridge.close()

    # Steps (the caller holds the board's lock) --------------------------------------------------

    def _load(self, slot: _Board, bit: Bitstream, log: LogFn) -> None:
        board = slot.spec.id
        slot.current = None
        log(f"hardware: loading {bit.ident!r} ({bit.sha256[:12]}) into board {board}")
        load(slot.spec.program, bit.bit, log, slot.run_dir)
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while True:
            try:
                ident = self._identifier(slot)
                if ident == bit.ident:
                    break
                problem = f"it answers with identifier {ident!r}, expected {bit.ident!r}"
            except BridgeError as exc:
                problem = f"it does not answer over {slot.bridge.describe()}: {exc}"
            if time.monotonic() >= deadline:
                raise ProgramError(f"the load did not take: {problem}")
            time.sleep(0.2)
        slot.bus_errors = slot.bridge.read(BUS_ERRORS, 1)[0]
        slot.current = bit
        log(f"hardware: board {board} up; identifier {ident!r}")

    @staticmethod
    def _identifier(slot: _Board) -> str:
        return decode_ident(slot.bridge.read(IDENTIFIER, IDENT_WORDS))

    def _check(self, slot: _Board, base: Bitstream) -> str:
        """'' if the board runs ``base`` and its scratch register works; else why not."""
        try:
            ident = self._identifier(slot)
            if problem := ident_problem(ident, base.ident):
                return problem
            before = slot.bridge.read(SCRATCH, 1)[0]
            pattern = scratch_pattern(before)
            after = slot.bridge.run(
                [Write(SCRATCH, (pattern,)), Read(SCRATCH, 1), Write(SCRATCH, (before,))]
            )[0]
            if problem := scratch_problem(pattern, after):
                return problem
            slot.bus_errors = slot.bridge.read(BUS_ERRORS, 1)[0]
        except BridgeError as exc:
            slot.current = None
            return f"does not answer over {slot.bridge.describe()}: {exc}"
        slot.current = base
        return ""

    def _power_cycle(self, slot: _Board, log: LogFn) -> None:
        command = slot.spec.power_cycle
        assert command is not None
        run_command(list(command), 60.0, log, slot.run_dir, "power cycle")
