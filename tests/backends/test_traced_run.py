"""``backends.trace.run_traced``, the traced run every backend makes, against a test
double of a board (a function that answers transactions): what happens to the run when
the capture cannot be armed, stopped, read back or kept. The run stands in every case;
the real scope's path is tested on simulated boards and twins (test_trace_sim.py,
tests/e2e/test_trace.py)."""

from __future__ import annotations

from collections.abc import Sequence

from fpgalab.backends.base import Op, TraceRequest, Transaction, TransactResult
from fpgalab.backends.trace import run_traced

#: A memory map with a scope: the base SoC's layout, at made-up addresses.
SCOPE_MAP = {
    "constants": {
        "scope_signals": "cyc:1,stb:1,we:1,adr:22,sel:4,dat_w:32,dat_r:32,ack:1,err:1",
        "scope_depth": 16,
        "scope_time_bits": 32,
        "config_clock_frequency": 50_000_000,
    },
    "csr_registers": {
        "scope_control": {"addr": 0x1000, "size": 1, "type": "rw"},
        "scope_qualify": {"addr": 0x1004, "size": 1, "type": "rw"},
        "scope_status": {"addr": 0x1008, "size": 1, "type": "ro"},
    },
    "memories": {"scope": {"base": 0x0200_0000, "size": 0x1000, "type": "io"}},
}
RUN = [Transaction(Op.READ, 0x2000_0000, length=2)]


class Board:
    """A test double of a board: the user's read answers [7, 9]; the scope's status reads
    ``status``; its region reads zeros; ``refuse`` makes accesses at that address fail."""

    def __init__(self, status: int = 0, refuse: int | None = None) -> None:
        self.status = status
        self.refuse = refuse
        self.seen: list[Transaction] = []

    def __call__(self, txns: Sequence[Transaction]) -> list[TransactResult]:
        results = []
        for txn in txns:
            self.seen.append(txn)
            if txn.address == self.refuse:
                results.append(TransactResult(ok=False, error=f"bus error at {txn.address:#x}"))
                break
            if txn.op is Op.WRITE:
                results.append(TransactResult(ok=True))
            elif txn.address == 0x2000_0000:
                results.append(TransactResult(ok=True, data=[7, 9]))
            elif txn.address == 0x1008:
                results.append(TransactResult(ok=True, data=[self.status]))
            else:
                results.append(TransactResult(ok=True, data=[0] * txn.length))
        return results


def test_a_build_without_a_scope_runs_untraced() -> None:
    board = Board()
    traced = run_traced(board, {"constants": {}}, RUN, TraceRequest())
    assert traced.results[0].data == [7, 9] and traced.waveform is None
    assert traced.error is not None and "has no logic analyzer" in traced.error
    assert board.seen == RUN  # nothing but the run reached the bus


def test_unknown_signals_run_untraced_naming_them() -> None:
    board = Board()
    traced = run_traced(board, SCOPE_MAP, RUN, TraceRequest(signals=("count",)))
    assert traced.results[0].data == [7, 9] and traced.waveform is None
    assert traced.error is not None and traced.error.startswith("unknown signal(s) 'count'")
    assert board.seen == RUN


def test_a_scope_that_fails_leaves_the_run() -> None:
    """Armed but not read back (its status read fails, or claims more than it holds): the
    run's results stand, the error says what of the scope failed."""
    for board, says in ((Board(refuse=0x1008), "could not be stopped: bus error at 0x1008"),
                        (Board(status=17), "reports 17 samples, more than the 16")):  # fmt: skip
        traced = run_traced(board, SCOPE_MAP, RUN, TraceRequest())
        assert traced.results[0].data == [7, 9] and traced.waveform is None
        assert traced.error is not None and says in traced.error, traced.error


def test_a_waveform_over_the_limit_is_refused() -> None:
    board = Board(status=3)
    kept = run_traced(board, SCOPE_MAP, RUN, TraceRequest())
    assert kept.waveform is not None and kept.waveform.samples == 3
    assert kept.waveform.signals[0] == "cyc" and kept.waveform.data.startswith(b"$timescale")
    limit = len(kept.waveform.data) - 1
    over = run_traced(Board(status=3), SCOPE_MAP, RUN, TraceRequest(max_bytes=limit))
    assert over.waveform is None and over.results[0].data == [7, 9]
    assert over.error == (
        f"the waveform is {limit + 1:,} bytes, over this lab's limit of {limit:,} "
        "(FPGALAB_MAX_WAVEFORM_BYTES): name fewer signals or trace a shorter run"
    )
