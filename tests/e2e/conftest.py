"""The lab the end-to-end suite drives, chosen on the command line:

- ``--backend sim`` (default): the simulated lab (``SimBackend``);
- ``--backend hardware``: the hardware backend against twins (``sim.twins.twin``): real
  bitstreams from the open toolchain, programmed with the real openFPGALoader over
  XVC, every transaction through UARTBone framing over TCP;
- ``--lab FILE``: the hardware backend against the real boards of a lab file.

The tests are the same for all three; what legitimately differs between the
backends (identifiers, build log lines, how UARTBone reports bus errors) is
described once here, in ``LabUnderTest``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.backends.base import Backend
from tests.helpers import board, wait_for

StartLab = Callable[[Sequence[int]], Awaitable[httpx.AsyncClient]]


def _quiet(line: str) -> None:
    pass


@dataclass
class LabUnderTest:
    kind: str  # "sim" or "hardware"
    backend: Backend
    #: The base SoC's identifier, as read over the bus.
    base_ident: str
    #: A user design's identifier (regex).
    design_ident: str
    #: Lines a fresh build's log shows, in order.
    build_steps: list[str]
    #: Text a cache hit must not log.
    not_on_cache_hit: list[str]
    #: A Verilog design with a syntax error: the job's error (regex), a line its log has.
    verilog_syntax_error: tuple[str, str]
    #: Bytes of SRAM the SoC has.
    sram_size: int
    #: Samples the SoC's scope holds.
    scope_depth: int
    #: The process simulating each board, where boards are simulated.
    pids: Callable[[int], int | None] | None = None
    twins: Any = None
    boards: list[int] = field(default_factory=lambda: list(range(10)))

    @property
    def simulated(self) -> bool:
        return self.pids is not None

    def pid(self, fpga_id: int) -> int:
        if self.pids is None:
            pytest.skip("needs simulated boards (this lab's boards are real)")
        pid = self.pids(fpga_id)
        assert pid is not None, f"board {fpga_id} runs no simulator"
        return pid

    def need(self, boards: Sequence[int]) -> None:
        missing = sorted(set(boards) - set(self.boards))
        if missing:
            pytest.skip(f"the lab file has no board {missing}")

    def crashed(self, fpga_id: int, when: str) -> str:
        """The error (regex) of a run whose board's simulator was killed ``when``."""
        if self.kind == "sim":
            # then what the simulator said last, if anything, on the same line
            said = r"(; its last output: .+)?"
            if when == "before":
                crashed = rf"board {fpga_id}: the simulator crashed \(SIGKILL\)"
                return rf"{crashed} before the request{said}"
            # "during" unless the kill landed before the worker's thread sent the
            # request; one cut short also names the socket error (connection reset).
            return (
                rf"board {fpga_id}: the simulator crashed \(SIGKILL\) (before|during) "
                rf"the request( \(.+\))?{said}"
            )
        # A twin's UART stays open when its simulator dies, as a cable does: silence.
        return rf"board {fpga_id}: no reply from socket://127\.0\.0\.1:\d+ within .*"

    def bus_error(self, address: int, word: int, count: int) -> str:
        """The error (regex) of a transfer whose word ``word`` a slave answers with err.

        UARTBone waits for ack and ignores err: on hardware such an access ends in the
        bus timeout, and the ``ctrl_bus_errors`` counter is how the backend knows."""
        if self.kind == "sim":
            return re.escape(f"bus error at {address:#010x} (word {word} of {count})")
        return self.bus_timeout(address, word, count)

    def bus_timeout(self, address: int, word: int, count: int) -> str:
        head = re.escape(f"bus timeout at {address:#010x} (word {word} of {count})")
        return head + r": no slave answered.*"

    def write_hole(self, address: int, word: int, count: int) -> str:
        """The error (regex) of a write of ``count`` words whose word ``word`` (at
        ``address``) and later ones hit nothing: UARTBone cannot say which word failed."""
        if self.kind == "sim":
            return self.bus_timeout(address, word, count)
        start = address - 4 * word
        failed = count - word
        return re.escape(f"bus error during the transfer at {start:#010x}: {failed} of {count}")

    def timeouts_counted(self, reads: int, writes: int) -> int:
        """``ctrl_bus_errors`` after a read of ``reads`` unmapped words and a write with
        ``writes`` words in a hole: the simulated bridge stops at the first failure."""
        return 2 if self.kind == "sim" else reads + writes


def _sim_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabUnderTest]:
    from fpgalab.backends.sim import SimBackend

    cache = request.getfixturevalue("sim_cache")
    sim = SimBackend(cache, run_dir=tmp_path / "boards")
    sim.builder.base(_quiet)  # before the worker starts: its first checks would all wait
    try:
        yield LabUnderTest(
            kind="sim",
            backend=sim,
            base_ident="fpgalab sim base SoC",
            design_ident=r"fpgalab sim design [0-9a-f]{12}",
            build_steps=[
                "sim: step 1/2: elaborate the SoC with LiteX",
                "elaborate: wrote lab_soc.v",
                "sim: step 2/2: compile the model with Verilator",
                "V e r i l a t i o n   R e p o r t",
                "sim: model built in",
            ],
            not_on_cache_hit=["verilator", "step 1/2"],
            sram_size=sim.builder.soc.sram_size,
            scope_depth=sim.builder.soc.scope_depth,
            verilog_syntax_error=(r"%Error: broken\.v:\d+:\d+: syntax error, .*", "%Error: "),
            pids=lambda b: sim.board(b).pid,
        )
    finally:
        sim.close()


def _twin_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabUnderTest]:
    from fpgalab.backends.hardware import HardwareBackend
    from fpgalab.sim.twins.twin import TwinLab

    cache = request.getfixturevalue("hw_cache")
    twins = TwinLab(list(range(10)), cache, run_dir=tmp_path / "twins")
    twins.start()
    lab_file = tmp_path / "twins.toml"
    lab_file.write_text(twins.lab_toml())
    hw = HardwareBackend(lab_file, data_dir=cache / "hardware")
    base = hw.builder.base(_quiet)
    twins.models.build(None, None, _quiet, ident=base.ident)
    try:
        yield _hardware(hw, twins)
    finally:
        hw.close()
        twins.close()


def _hardware(hw: Any, twins: Any = None) -> LabUnderTest:
    return LabUnderTest(
        kind="hardware",
        backend=hw,
        base_ident="fpgalab hw base SoC",
        design_ident=r"fpgalab hw design [0-9a-f]{12}",
        build_steps=[
            "hw: step 1/4: elaborate the SoC with LiteX",
            "hw: step 2/4: synthesis (yosys)",
            "hw: step 3/4: place and route (nextpnr-ecp5)",
            "hw: step 4/4: bitstream (ecppack)",
        ],
        not_on_cache_hit=["yosys", "nextpnr", "step 1/4"],
        sram_size=hw.builder.config.sram_size,
        scope_depth=hw.builder.config.scope_depth,
        verilog_syntax_error=(r"broken\.v:\d+: ERROR: syntax error.*", "ERROR: "),
        pids=(lambda b: twins.twins[b].sim.pid) if twins is not None else None,
        twins=twins,
        boards=sorted(hw.lab.board_ids),
    )


def _real_lab(path: str, tmp_path: Path) -> Iterator[LabUnderTest]:
    from fpgalab.backends.hardware import HardwareBackend

    hw = HardwareBackend(path, data_dir=Path(os.environ.get("FPGALAB_DATA_DIR", tmp_path)))
    try:
        yield _hardware(hw)
    finally:
        hw.close()


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabUnderTest]:
    lab_file = request.config.getoption("--lab")
    if lab_file:
        yield from _real_lab(lab_file, tmp_path)
    elif request.config.getoption("--backend") == "hardware":
        yield from _twin_lab(request, tmp_path)
    else:
        yield from _sim_lab(request, tmp_path)


@pytest.fixture
async def start_lab(
    target: LabUnderTest, client: httpx.AsyncClient, start_worker: Any
) -> AsyncIterator[StartLab]:
    """Start a worker driving the lab for some boards; the API client once all are good.

    ``target`` comes first so that it is closed after the worker has stopped."""

    async def start(boards: Sequence[int]) -> httpx.AsyncClient:
        target.need(boards)
        await start_worker(boards, fake=target.backend, wait_healthy=False)

        async def all_good() -> bool:
            rows = [await board(client, b) for b in boards]
            return all(row["health"] == "good" and row["state"] == "idle" for row in rows)

        await wait_for(all_good, timeout=120)
        return client

    yield start
    await asyncio.sleep(0)
