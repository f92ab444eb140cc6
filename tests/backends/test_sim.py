"""The sim backend against real LiteX, Verilator and cocotb: builds, boards, bus traffic."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fpgalab.backends.base import BoardError, Build, Design, DesignError, Op, Transaction
from fpgalab.backends.sim import SimBackend
from fpgalab.sim.protocol import Command, Status
from tests.helpers import Log

pytestmark = pytest.mark.sim

USER = 0x2000_0000
SRAM = 0x0100_0000
SCRATCH = 0x0000_0004
UNMAPPED = 0x4000_0000
DESIGN_ID = 0xC0FFEE01

Read = Callable[[str], bytes]


def build(sim: SimBackend, name: str, source: bytes) -> tuple[Build, Log]:
    log = Log()
    return sim.build(Design(name, source), log), log


def write(sim: SimBackend, board: int, address: int, *words: int) -> None:
    result = sim.transact(board, Transaction(Op.WRITE, address, tuple(words)))
    assert result.ok, result.error


def read(sim: SimBackend, board: int, address: int, length: int = 1) -> list[int]:
    result = sim.transact(board, Transaction(Op.READ, address, length=length))
    assert result.ok, result.error
    return result.data


def identifier(sim: SimBackend, board: int) -> str:
    words = read(sim, board, 0x800, 64)
    return bytes(w for w in words[: words.index(0)]).decode()


@pytest.mark.parametrize("name", ["accumulator.py", "accumulator.v"])
def test_example_design_computes(sim: SimBackend, example: Read, name: str) -> None:
    """Each example's registers compute: a sum, an accumulator, a cycle counter, an error."""
    built, log = build(sim, name, example(name))
    assert built.cached or "sim: step 2/2" in log.text()
    sim.program(0, built, Log())

    write(sim, 0, USER + 0, 1234, 4321)
    assert read(sim, 0, USER + 0, 3) == [1234, 4321, 5555]
    for value in (5, 7, 30):
        write(sim, 0, USER + 12, value)
    assert read(sim, 0, USER + 12) == [42]
    assert read(sim, 0, USER + 16) == [DESIGN_ID]
    first, second = read(sim, 0, USER + 20)[0], read(sim, 0, USER + 20)[0]
    assert second > first  # the clock runs while the bus is busy

    beyond = sim.transact(0, Transaction(Op.READ, USER + 32, length=1))
    assert not beyond.ok and beyond.error == "bus error at 0x20000020 (word 0 of 1)"

    mem_map = sim.memory_map(0)
    assert mem_map is not None
    assert mem_map["memories"]["user"] == {"base": USER, "size": 0x100_0000, "type": "io"}
    assert identifier(sim, 0) == f"fpgalab sim design {built.key[:12]}"


def test_python_and_verilog_examples_agree(sim: SimBackend, example: Read) -> None:
    """The two example designs answer the same accesses with the same words."""
    results = []
    for board, name in enumerate(["accumulator.py", "accumulator.v"]):
        built, _ = build(sim, name, example(name))
        sim.program(board, built, Log())
        write(sim, board, USER, 0xFFFF_FFFF, 2)
        write(sim, board, USER + 12, 9)
        results.append(read(sim, board, USER, 5))
    assert results[0] == results[1] == [0xFFFF_FFFF, 2, 1, 9, DESIGN_ID]


def test_sram_4096_words_read_back_word_for_word(sim: SimBackend) -> None:
    """A 4,096-word write then read of SRAM returns each word at its own address."""
    words = [random.getrandbits(32) for _ in range(4096)]
    sim.reset(1, Log())
    write(sim, 1, SRAM, *words)
    assert read(sim, 1, SRAM, 4096) == words
    # Offsets inside a burst and across burst boundaries.
    assert read(sim, 1, SRAM + 4 * 255, 3) == words[255:258]
    assert read(sim, 1, SRAM + 4 * 4095) == [words[4095]]
    # The per-clock master (the other bus port) sees the same memory.
    board = sim.board(1)
    raw = board.request(Command.RAW_READ, SRAM, 600)
    assert raw.status is Status.OK and raw.data == words[:600]


def test_raw_port_writes_land_where_bursts_read(sim: SimBackend) -> None:
    """Words written one clock at a time read back in order through the burst master."""
    sim.reset(1, Log())
    words = [random.getrandbits(32) for _ in range(300)]
    from fpgalab.sim.board import to_bytes

    reply = sim.board(1).request(Command.RAW_WRITE, SRAM + 64, len(words), to_bytes(words))
    assert reply.status is Status.OK and reply.done == 300
    assert read(sim, 1, SRAM + 64, 300) == words


def test_unmapped_address_times_out_quickly(sim: SimBackend) -> None:
    """An access nobody answers comes back as a bus timeout, in well under a second."""
    sim.reset(2, Log())
    started = time.monotonic()
    result = sim.transact(2, Transaction(Op.READ, UNMAPPED, length=4))
    assert time.monotonic() - started < 1.0
    assert not result.ok and result.data == []
    assert result.error is not None and result.error.startswith("bus timeout at 0x40000000")
    # Partial transfers keep what was done before the failure; ctrl counts the errors.
    last_sram_word = SRAM + 0x4_0000 - 4
    write(sim, 2, last_sram_word, 77)
    partial = sim.transact(2, Transaction(Op.READ, last_sram_word, length=3))
    assert not partial.ok and partial.data == [77]
    assert "(word 1 of 3)" in (partial.error or "")
    assert read(sim, 2, 0x8)[0] >= 2  # ctrl_bus_errors
    # The empty user slot of the base SoC answers with an error at once.
    empty = sim.transact(2, Transaction(Op.WRITE, USER, (1,)))
    assert not empty.ok and (empty.error or "").startswith("bus error at 0x20000000")


def test_second_build_is_a_cache_hit(sim: SimBackend, example: Read) -> None:
    """The same design again is served from the cache: no elaboration, no Verilator."""
    first, _ = build(sim, "accumulator.v", example("accumulator.v"))
    again, log = build(sim, "renamed.v", example("accumulator.v"))
    assert again.cached and again.key == first.key
    # and the log says nothing of it: whose build it was is not the caller's business
    assert log.text() == ""


def test_broken_python_design_fails_with_its_traceback(sim: SimBackend) -> None:
    """A Python design that raises fails the build with the user's error, traceback logged."""
    source = (
        b"from migen import Module\n\n"
        b"class Design(Module):\n"
        b"    def __init__(self):\n"
        b"        self.bus = not_defined_anywhere\n"
    )
    log = Log()
    with pytest.raises(DesignError) as info:
        sim.build(Design("broken.py", source), log)
    assert str(info.value) == "broken.py:5: NameError: name 'not_defined_anywhere' is not defined"
    assert 'File "broken.py", line 5, in __init__' in log.text()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"x = 1\n", "broken.py: defines no `Design`"),
        (b"from migen import Module\nclass Design(Module): pass\n", "has no attribute `bus`"),
        (b"def f(:\n", "broken.py:1: SyntaxError"),
        (b"import sys\nsys.exit(3)\n", "elaboration stopped with status 3"),
    ],
)
def test_python_design_contract(sim: SimBackend, source: bytes, message: str) -> None:
    """Designs that break the contract fail with a message that says how."""
    with pytest.raises(DesignError, match=message):
        sim.build(Design("broken.py", source), Log())


def test_verilog_syntax_error_fails_with_verilators_message(sim: SimBackend, example: Read) -> None:
    """Verilator's own error, path shortened to the user's file, is the job's error."""
    source = example("accumulator.v").replace(b"wb_ack <= 1'b1;", b"wb_ack <= 1'b1")
    log = Log()
    with pytest.raises(DesignError) as info:
        sim.build(Design("adder.v", source), log)
    assert str(info.value).startswith("%Error: adder.v:")
    assert "syntax error" in str(info.value)
    assert any(line.startswith("%Error") and "syntax error" in line for line in log)


def test_crashed_simulator_fails_the_job_and_reset_recovers(sim: SimBackend) -> None:
    """A simulator killed under a board makes its next transaction a BoardError; reset heals."""
    sim.reset(3, Log())
    os.kill(sim.board(3).pid or 0, signal.SIGKILL)
    with pytest.raises(BoardError, match="board 3: the simulator crashed \\(SIGKILL\\)"):
        sim.transact(3, Transaction(Op.READ, SCRATCH, length=1))
    with pytest.raises(BoardError, match="no simulator is running"):
        sim.transact(3, Transaction(Op.READ, SCRATCH, length=1))
    sim.reset(3, Log())
    assert identifier(sim, 3) == "fpgalab sim base SoC"
    assert read(sim, 3, SCRATCH) == [0x12345678]
    assert sim.health(3).ok


def test_design_that_stops_the_simulation(sim: SimBackend, example: Read) -> None:
    """A design whose $fatal ends the simulation fails that transaction with its message."""
    source = example("accumulator.v").replace(
        b"    always @(posedge clk) begin\n",
        b"    always @(posedge clk) begin\n"
        b'        if (wb_cyc && wb_stb && wb_adr == 30\'d7) $fatal(1, "touched word 7");\n',
        1,
    )
    built, _ = build(sim, "fatal.v", source)
    sim.program(4, built, Log())
    assert read(sim, 4, USER + 16) == [DESIGN_ID]
    with pytest.raises(BoardError) as info:
        sim.transact(4, Transaction(Op.READ, USER + 28, length=1))
    assert "exited with status" in str(info.value)
    assert "touched word 7" in str(info.value)
    sim.reset(4, Log())
    assert identifier(sim, 4) == "fpgalab sim base SoC"


def test_reset_restores_the_base_soc(sim: SimBackend, example: Read) -> None:
    """After a user's design, reset brings back the base SoC with fresh memory."""
    built, _ = build(sim, "accumulator.py", example("accumulator.py"))
    sim.program(5, built, Log())
    write(sim, 5, SRAM, 0xDEAD_BEEF)
    log = Log()
    sim.reset(5, log)
    assert identifier(sim, 5) == "fpgalab sim base SoC"
    assert read(sim, 5, SRAM) == [0]
    assert any("base SoC" in line for line in log)
    health = sim.health(5)
    assert health.ok and "fpgalab sim base SoC" in health.detail


def test_boards_run_in_parallel_threads(sim: SimBackend) -> None:
    """Two boards driven from two threads at once keep their own memories."""
    errors: list[BaseException] = []

    def drive(board: int) -> None:
        try:
            sim.reset(board, Log())
            for round_ in range(5):
                words = [board * 1000 + round_ * 10 + i for i in range(2048)]
                write(sim, board, SRAM, *words)
                assert read(sim, board, SRAM, 2048) == words
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(b,)) for b in (6, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_idle_board_uses_no_cpu(sim: SimBackend) -> None:
    """A simulator waiting for its host is parked: (almost) no CPU time passes."""
    sim.reset(8, Log())
    pid = sim.board(8).pid

    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    before = cpu_ticks()
    time.sleep(1.0)
    assert cpu_ticks() - before <= 2  # clock ticks (1/100 s)


def test_build_limits_stop_runaway_designs(sim_cache: Path, tmp_path: Path) -> None:
    """A design that loops forever hits the build timeout; one that hogs memory, its limit."""
    sim = SimBackend(sim_cache, build_timeout=3, run_dir=tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(DesignError, match="elaboration took longer than 3 s"):
            sim.build(Design("spin.py", b"while True:\n    pass\n"), Log())
        assert time.monotonic() - started < 10
        with pytest.raises(DesignError, match=r"hog\.py:1: MemoryError"):
            sim.build(Design("hog.py", b"x = bytearray(3 << 30)\n"), Log())
    finally:
        sim.close()


def test_soc_reset_through_ctrl(sim: SimBackend) -> None:
    """Writing ctrl's soc_rst resets the SoC's registers; the host's bridge keeps working."""
    sim.reset(9, Log())
    for _ in range(2):  # the bridge's request toggle in both phases
        write(sim, 9, SCRATCH, 0x5555_AAAA)
        assert read(sim, 9, SCRATCH) == [0x5555_AAAA]
        write(sim, 9, 0x0, 1)  # ctrl_reset.soc_rst
        assert read(sim, 9, SCRATCH) == [0x12345678]
        write(sim, 9, SRAM, 0)
