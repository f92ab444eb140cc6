"""A traced run, the same on every backend: arm the board's logic analyzer, run the
transactions, stop the analyzer, read its samples back, make a VCD of them.

The analyzer is gateware in the base SoC (``hil.gateware.scope``), reached through the
board's own bus bridge like any register; ``hil.trace`` plans the accesses and reads the
words back (no I/O of its own), so a simulated board, a twin and a real board give the
same waveform for the same run. Nothing here trusts the board: the layout comes from the
build's memory map (written by sandboxed code) and is checked by ``hil.trace``, and the
samples are bounded by the analyzer's depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fpgalab.backends.base import TracedRun, TraceRequest, Transaction, TransactResult, Waveform
from fpgalab.hil import trace as scope

RunFn = Callable[[Sequence[Transaction]], list[TransactResult]]


def _transactions(accesses: Sequence[scope.Access]) -> list[Transaction]:
    return [Transaction(a.op, a.address, a.data, a.length) for a in accesses]


def _words(run: RunFn, accesses: Sequence[scope.Access], what: str) -> list[int]:
    """Run the analyzer's own accesses; the words they read. A failure is a TraceError:
    the analyzer's registers are the lab's, so a bus error there is no user's doing."""
    txns = _transactions(accesses)
    results = run(txns)
    if len(results) != len(txns) or not all(r.ok for r in results):
        failed = next((r for r in results if not r.ok), None)
        why = failed.error if failed is not None and failed.error else "not run"
        raise scope.TraceError(f"the logic analyzer could not be {what}: {why}")
    return [word for r in results for word in r.data]


def run_traced(
    run: RunFn,
    memory_map: dict[str, Any] | None,
    txns: Sequence[Transaction],
    request: TraceRequest,
) -> TracedRun:
    """``txns`` through ``run`` with the analyzer around them (its own accesses through
    ``run`` too). The results stand whatever becomes of the capture."""
    try:
        layout = scope.scope_layout(memory_map)
        if layout is None:
            raise scope.TraceError(
                "the SoC on this board has no logic analyzer (the build predates traces: "
                "submit the design again to rebuild it)"
            )
        signals = request.signals
        _words(run, scope.arm(layout, signals), "armed")
    except scope.TraceError as exc:
        return TracedRun(run(txns), error=str(exc))
    results = run(txns)
    try:
        stop = scope.stop(layout)
        level = _words(run, stop, "stopped")[-1]
        words = _words(run, scope.readout(layout, level), "read back")
        capture = scope.decode(layout, words)
        data = scope.to_vcd(layout, capture, signals)
    except scope.TraceError as exc:
        return TracedRun(results, error=str(exc))
    if len(data) > request.max_bytes:
        return TracedRun(
            results,
            error=f"the waveform is {len(data):,} bytes, over this lab's limit of "
            f"{request.max_bytes:,} (FPGALAB_MAX_WAVEFORM_BYTES): name fewer signals or "
            f"trace a shorter run",
        )
    wanted = set(signals or layout.names)
    shown = tuple(name for name in layout.names if name in wanted)  # as the VCD has them
    return TracedRun(
        results,
        Waveform("vcd", data, samples=len(capture.samples), full=capture.full, signals=shown),
    )
