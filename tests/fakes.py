"""Test doubles. ``FakeBackend`` stands in for a lab backend in service tests
only; the product's backends live in ``backends/``.

Its behaviour is steered by markers in the design text, so that it works the
same in a worker in another process:

- ``FAIL_BUILD``   build raises DesignError (the user's fault)
- ``INFRA_FAIL``   build raises BackendUnavailable (the lab's fault)
- ``PROGRAM_FAIL`` program raises BoardError
- ``SLEEP=<s>``    build sleeps that many seconds first
- ``GATE``         build waits until the test calls ``release_gate()``
- ``ECHO:<text>``  build logs ``<text>`` (the rest of its line) as is: hostile log lines
- ``NO_SCOPE``     the programmed design has no logic analyzer: traced runs say so

A traced run (``transact_traced``) gives a small VCD of the run's transactions made here
(a double of ``backends.trace``: it shows the service's side, not the analyzer's).

A test in the same process can also hold ``program``, ``transact``, ``reset`` or
``health`` calls: add the op names to ``hold`` (and board ids to ``hold_boards`` to hold
only on those boards); a held call sets ``held`` and waits until the test sets
``resume`` (at most ``HOLD_TIMEOUT`` seconds, then it raises BackendUnavailable).
``close()`` opens the gate and resumes every held call.

``FileHeldFakeBackend`` holds the same calls (and builds) in a worker in another
process: the test steers it through files in the backend's ``data_dir``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpgalab.backends import (
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
    Waveform,
)
from fpgalab.hil import trace as trace_plan

#: The analyzer the double's traces come from: the real bus signals, a 16-bit word offset.
FAKE_SCOPE = trace_plan.ScopeLayout(
    signals=tuple(
        trace_plan.Probe(name, 16 if name == "adr" else trace_plan.BUS_WIDTHS[name][1])
        for name in trace_plan.BUS_WIDTHS
    ),
    depth=4096, clock_hz=50_000_000, time_bits=32, control=0, qualify=0, status=0, base=0,
)  # fmt: skip

#: Reads or writes at or above this byte address get a bus error.
BUS_ERROR_BASE = 0xF000_0000

#: How long a held call or a build at the GATE waits for the test before giving up.
HOLD_TIMEOUT = 30.0


class FakeBackend:
    """A lab of memories: writes are kept per board, reads give them back."""

    name = "fake"

    def __init__(self, **options: Any) -> None:
        self.options = options  # data_dir, build_timeout: what a worker makes backends with
        self.memory: dict[int, dict[int, int]] = {}
        self.programmed: dict[int, str] = {}
        self.crashed: set[int] = set()  # transact raises BoardError
        self.unhealthy: set[int] = set()  # health reports not ok
        self.no_scope: set[int] = set()  # programmed with a NO_SCOPE design
        self.fail_reset: set[int] = set()  # reset raises BoardError
        self.calls: list[tuple[str, Any]] = []
        self.gate = threading.Event()
        self.gate_reached = threading.Event()
        self.hold: set[str] = set()  # op names: "program", "transact", "reset", "health"
        self.hold_boards: set[int] = set()  # hold only on these boards; empty: on every board
        self.held = threading.Event()  # a held call is waiting
        self.resume = threading.Event()  # lets every held call go on
        self._lock = threading.Lock()

    def release_gate(self) -> None:
        self.gate.set()

    def pause(self, op: str) -> None:
        """Wait until the test sets ``resume``, having set ``held`` to say so."""
        self.held.set()
        if not self.resume.wait(HOLD_TIMEOUT):
            raise BackendUnavailable(f"fake: the test never resumed {op}")

    def _hold(self, op: str, board: int) -> None:
        if op in self.hold and (not self.hold_boards or board in self.hold_boards):
            self.pause(op)

    def build(self, design: Design, log: LogFn) -> Build:
        text = design.source.decode()
        self.calls.append(("build", design.filename))
        log(f"fake: elaborating {design.filename}")
        for echoed in re.findall(r"ECHO:([^\n]*)", text):
            log(echoed)
        if m := re.search(r"SLEEP=([0-9.]+)", text):
            time.sleep(float(m.group(1)))
        if "GATE" in text:
            self.gate_reached.set()
            if not self.gate.wait(HOLD_TIMEOUT):
                raise BackendUnavailable("fake: the test never released the gate")
        if "FAIL_BUILD" in text:
            log("fake: design.py:3: SyntaxError: invalid syntax")
            raise DesignError("design.py:3: SyntaxError: invalid syntax")
        if "INFRA_FAIL" in text:
            raise BackendUnavailable("fake: toolchain not found")
        log("fake: verilating")
        details = {"program_fail": "PROGRAM_FAIL" in text, "no_scope": "NO_SCOPE" in text}
        return Build(key=design.sha256, details=details)

    def program(self, board: int, build: Build, log: LogFn) -> None:
        self._hold("program", board)
        self.calls.append(("program", board))
        if build.details.get("program_fail"):
            raise BoardError(f"fake: board {board} did not come up after programming")
        with self._lock:
            self.programmed[board] = build.key
            self.memory[board] = {}
            (self.no_scope.add if build.details.get("no_scope") else self.no_scope.discard)(board)
        log(f"fake: board {board} programmed")

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        self._hold("transact", board)
        self.calls.append(("transact", board))
        if board in self.crashed:
            raise BoardError(f"fake: board {board} stopped answering")
        words = len(txn.data) if txn.op is Op.WRITE else txn.length
        if txn.address + 4 * words > BUS_ERROR_BASE:
            return TransactResult(ok=False, error=f"bus error at {BUS_ERROR_BASE:#010x}")
        mem = self.memory.setdefault(board, {})
        if txn.op is Op.WRITE:
            for i, word in enumerate(txn.data):
                mem[txn.address + 4 * i] = word
            return TransactResult(ok=True)
        return TransactResult(ok=True, data=[mem.get(txn.address + 4 * i, 0) for i in range(words)])

    def transact_many(self, board: int, txns: Sequence[Transaction]) -> list[TransactResult]:
        """Each in turn through ``transact`` (its holds and failures included), up to and
        including the first that fails."""
        results: list[TransactResult] = []
        for txn in txns:
            results.append(self.transact(board, txn))
            if not results[-1].ok:
                break
        return results

    def transact_traced(
        self, board: int, txns: Sequence[Transaction], trace: TraceRequest
    ) -> TracedRun:
        """The run, and a waveform made of its transactions as the analyzer would have
        seen them (three cycles each: asked, answered, idle), written by the real VCD
        writer (``hil.trace.to_vcd``); unknown signals refused as the real plan does."""
        results = self.transact_many(board, txns)
        if board in self.no_scope:
            return TracedRun(results, error="fake: this build has no logic analyzer")
        layout = FAKE_SCOPE
        try:
            trace_plan.arm(layout, trace.signals)  # checks the names
        except trace_plan.TraceError as exc:
            return TracedRun(results, error=str(exc))
        samples, cycle = [], 0
        for txn, result in zip(txns, results, strict=False):
            write = txn.op is Op.WRITE
            for i in range(txn.words):
                word = (txn.address >> 2) + i
                data = txn.data[i] if write else (result.data[i] if i < len(result.data) else 0)
                ok = result.ok or i < len(result.data)
                for cyc, answered in ((1, False), (1, True), (0, False)):
                    cycle += 1
                    ack, err = int(answered and ok), int(answered and not ok)
                    values = (cyc, cyc, int(write), word & 0xFFFF, 15, data if write else 0,
                              0 if write else data, ack, err)  # fmt: skip
                    samples.append(trace_plan.Sample(cycle, values))
        capture = trace_plan.Capture(tuple(samples), full=False)
        data = trace_plan.to_vcd(layout, capture, trace.signals)
        if len(data) > trace.max_bytes:
            return TracedRun(results, error=f"fake: {len(data)} bytes, over {trace.max_bytes}")
        wanted = set(trace.signals or layout.names)
        shown = tuple(n for n in layout.names if n in wanted)
        wave = Waveform("vcd", data, samples=len(samples), full=False, signals=shown)
        return TracedRun(results, wave)

    def reset(self, board: int, log: LogFn) -> None:
        self._hold("reset", board)
        self.calls.append(("reset", board))
        if board in self.fail_reset:
            raise BoardError(f"fake: board {board} did not take the base SoC")
        self.crashed.discard(board)
        with self._lock:
            self.memory[board] = {}
            self.programmed.pop(board, None)
        log(f"fake: board {board} back to the base SoC")

    def health(self, board: int) -> HealthReport:
        self._hold("health", board)
        if board in self.unhealthy:
            return HealthReport(ok=False, detail=f"fake: board {board} does not answer")
        return HealthReport(ok=True, detail="fake: identifier ok")

    def memory_map(self, board: int) -> dict[str, Any] | None:
        """A csr.json-like map naming what is loaded: the base SoC or a build's key."""
        image = self.programmed.get(board, "base")
        return {"memories": {"user": {"base": 0x2000_0000, "size": 0x100_0000}}, "image": image}

    def close(self) -> None:
        self.gate.set()
        self.resume.set()


class SlowStartFakeBackend(FakeBackend):
    """FakeBackend (a test double) whose boards take ``START_SECONDS`` to come up: the
    first health check of each board waits that long, as the simulated lab's first start
    builds its base SoC. For ``fpgalab serve --backend tests.fakes:SlowStartFakeBackend``."""

    name = "fake-slow-start"
    START_SECONDS = 3.0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.up: set[int] = set()

    def health(self, board: int) -> HealthReport:
        if board not in self.up:
            time.sleep(self.START_SECONDS)
            self.up.add(board)
        return super().health(board)


#: Files in a ``FileHeldFakeBackend``'s ``data_dir`` that steer it from another process.
HOLD_FILE = "hold"  # written by the test: lines ``op`` or ``op board`` to hold
HELD_FILE = "held"  # written by the backend: ``op board`` of the call it holds now
RESUME_FILE = "resume"  # created by the test: every held call goes on


class FileHeldFakeBackend(FakeBackend):
    """FakeBackend (a test double) whose holds are steered through files, for a worker in
    another process (``--backend tests.fakes:FileHeldFakeBackend``), where no test can
    set ``hold`` or ``resume``.

    A ``build``, ``program``, ``transact`` or ``reset`` call named in ``data_dir/hold``
    (``op``, or ``op board`` for one board; builds have no board: ``build``) writes
    ``data_dir/held`` and waits until ``data_dir/resume`` exists (at most
    ``HOLD_TIMEOUT`` seconds, then it raises BackendUnavailable). The folder is the one a
    worker makes every backend with (``service.cli.backend_options``)."""

    name = "fake-held-by-files"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        folder = options.get("data_dir")
        if folder is None:
            raise BackendUnavailable("FileHeldFakeBackend needs a data_dir for its hold files")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _file_hold(self, op: str, board: int | None) -> None:
        try:
            wanted = (self.folder / HOLD_FILE).read_text().split("\n")
        except FileNotFoundError:
            return
        here = f"{op} {'-' if board is None else board}"
        if op not in wanted and here not in wanted:
            return
        scratch = self.folder / f"{HELD_FILE}.tmp"
        scratch.write_text(here)
        scratch.replace(self.folder / HELD_FILE)  # atomic: a reader never sees half of it
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not (self.folder / RESUME_FILE).exists() and not self.resume.is_set():
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"fake: the test never resumed {here}")
            time.sleep(0.02)

    def _hold(self, op: str, board: int) -> None:
        self._file_hold(op, board)
        super()._hold(op, board)

    def build(self, design: Design, log: LogFn) -> Build:
        log(f"fake: build of {design.filename} started")
        self._file_hold("build", None)
        return super().build(design, log)
