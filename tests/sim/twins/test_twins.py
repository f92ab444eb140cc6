"""The hardware backend against twins, below the API: real bitstreams from the open
toolchain, loaded by the real openFPGALoader over XVC, every transfer in UARTBone
framing over TCP; and faults on the link (``tests.faults.FaultyLink``) between them."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.backends.base import BoardError, Design, Op, Transaction
from fpgalab.backends.hardware import HardwareBackend
from fpgalab.hil.build.ecp5 import BitstreamBuilder
from fpgalab.hil.gateware.bitfile import bit_payload, loaded_forms
from fpgalab.hil.gateware.config import BUS_ERRORS, IDENTIFIER, SCRATCH
from fpgalab.hil.lab.labfile import parse_lab
from fpgalab.sim.twins.twin import TwinLab
from tests.e2e import test_api as e2e
from tests.faults import FaultyLink
from tests.helpers import TCP_PROBE, board, run_as_nobody, wait_for

pytestmark = pytest.mark.sim

SRAM = 0x0100_0000
USER = 0x2000_0000
BASE_IDENT = "fpgalab hw base SoC"

Read = Callable[[str], bytes]


def quiet(line: str) -> None:
    pass


def read(hw: HardwareBackend, board: int, address: int, length: int = 1) -> Any:
    return hw.transact(board, Transaction(Op.READ, address, length=length))


def write(hw: HardwareBackend, board: int, address: int, words: list[int]) -> Any:
    return hw.transact(board, Transaction(Op.WRITE, address, tuple(words)))


def text_of(words: list[int]) -> str:
    return bytes(w & 0xFF for w in words[: words.index(0)]).decode()


@pytest.fixture
def twins(hw_cache: Path, sim_cache: Path, tmp_path: Path) -> Iterator[TwinLab]:
    lab = TwinLab([0, 1], hw_cache, run_dir=tmp_path / "twins")
    lab.start()
    yield lab
    lab.close()


def backend_for(twins: TwinLab, hw_cache: Path, tmp_path: Path, **ports: int) -> HardwareBackend:
    """A backend whose lab file points at ``twins``; ``uart0=PORT`` reroutes board 0."""
    text = twins.lab_toml()
    if "uart0" in ports:
        text = text.replace(twins.twins[0].info.uart_url, f"socket://127.0.0.1:{ports['uart0']}")
    return HardwareBackend(lab=parse_lab(text, "twins.toml"), data_dir=hw_cache / "hardware")


@pytest.fixture
def hw(twins: TwinLab, hw_cache: Path, tmp_path: Path) -> Iterator[HardwareBackend]:
    backend = backend_for(twins, hw_cache, tmp_path)
    yield backend
    backend.close()


def test_a_fresh_twin_is_brought_up_with_the_base_soc_by_its_health_check(
    hw: HardwareBackend, twins: TwinLab
) -> None:
    """A twin starts unconfigured; the health check loads the base SoC with
    openFPGALoader over XVC and then finds its identifier and scratch register."""
    assert twins.twins[0].running is None
    report = hw.health(0)
    assert report.ok, report.detail
    assert "reloaded" in report.detail
    base = hw.builder.base(quiet)
    assert twins.twins[0].running == hashlib.sha256(bit_payload(base.bit.read_bytes())).hexdigest()
    ident = read(hw, 0, IDENTIFIER, 64)
    assert ident.ok and text_of(ident.data) == BASE_IDENT
    assert read(hw, 0, SCRATCH).data == [0x12345678]
    assert hw.health(0).detail == f"{BASE_IDENT}; scratch ok"  # no reload the second time
    assert hw.memory_map(0) == base.csr()


def test_a_design_loads_and_computes_and_a_reset_clears_the_sram(
    hw: HardwareBackend, twins: TwinLab, example: Read
) -> None:
    """A built design is loaded, confirmed by its identifier and computes; after a reset
    the base SoC is back and nothing the session wrote is readable."""
    build = hw.build(Design("accumulator.v", example("accumulator.v")), quiet)
    lines: list[str] = []
    hw.program(0, build, lines.append)
    assert any(line.startswith("program: openFPGALoader -c xvc-client") for line in lines)
    ident = text_of(read(hw, 0, IDENTIFIER, 64).data)
    assert (
        re.fullmatch(r"fpgalab hw design [0-9a-f]{12}", ident) and ident == build.details["ident"]
    )
    assert f"hardware: board 0 up; identifier {ident!r}" in lines
    assert write(hw, 0, USER, [40, 2]).ok
    assert read(hw, 0, USER, 3).data == [40, 2, 42]
    words = list(range(1, 601))  # three write frames, a read split in three
    assert write(hw, 0, SRAM, words).ok
    assert read(hw, 0, SRAM, 600).data == words

    hw.reset(0, quiet)
    assert text_of(read(hw, 0, IDENTIFIER, 64).data) == BASE_IDENT
    assert read(hw, 0, SRAM, 600).data == [0] * 600
    empty = read(hw, 0, USER)
    assert not empty.ok and empty.error.startswith("bus timeout at 0x20000000 (word 0 of 1)")


def test_bus_timeouts_are_counted_and_reported(hw: HardwareBackend) -> None:
    """UARTBone reports no bus errors: the backend reads ctrl_bus_errors with every
    transfer, names a read's first failed word and keeps the data before it."""
    assert hw.health(0).ok
    end = SRAM + hw.builder.config.sram_size
    result = read(hw, 0, end - 8, 4)  # two words of SRAM, then nothing
    assert not result.ok and result.data == [0, 0]
    assert result.error == (
        f"bus timeout at {end:#010x} (word 2 of 4): no slave answered within 4096 cycles "
        "(2 of 4 accesses timed out)"
    )
    hole = write(hw, 0, end - 4, [1, 2])
    assert not hole.ok and hole.error.startswith(
        f"bus error during the transfer at {end - 4:#010x}: 1 of 2 accesses ended in a bus timeout"
    )
    assert read(hw, 0, BUS_ERRORS).data == [3]
    assert read(hw, 0, end - 4).data == [1]


def test_an_unknown_bitstream_leaves_the_board_unconfigured(hw_cache: Path, tmp_path: Path) -> None:
    """Twins that do not know a bitstream stay silent after its load, and the backend's
    identifier check fails the load even though openFPGALoader said nothing wrong."""
    strangers = TwinLab([0], tmp_path / "empty-cache", run_dir=tmp_path / "twins")
    strangers.start()
    hw = backend_for(strangers, hw_cache, tmp_path)
    try:
        with pytest.raises(BoardError) as failed:
            hw.reset(0, quiet)
        assert re.fullmatch(
            r"board 0: the load did not take: it does not answer over uart "
            r"socket://127\.0\.0\.1:\d+ @ 1000000 baud: .+",
            str(failed.value),
        ), str(failed.value)
        assert strangers.twins[0].running is None
        report = hw.health(0)
        assert not report.ok and "the load did not take" in report.detail
    finally:
        hw.close()
        strangers.close()


@pytest.mark.parametrize("fault", ["drop", "short", "silent", "garbage"])
def test_a_faulty_link_fails_the_transfer_cleanly_and_a_reset_heals(
    twins: TwinLab, hw_cache: Path, tmp_path: Path, fault: str
) -> None:
    """A link that drops, answers too little, never answers or garbles fails the
    transfer with a clear BoardError within the deadline (never a hang, never a wrong
    answer taken for a right one); once the link is good a reset brings the board back."""
    with FaultyLink("127.0.0.1", twins.twins[0].info.uart_port) as link:
        hw = backend_for(twins, hw_cache, tmp_path, uart0=link.port)
        try:
            assert hw.health(0).ok
            link.set_fault(fault, after=4)
            with pytest.raises(BoardError) as failed:
                read(hw, 0, SRAM, 16)
            message = str(failed.value)
            expected = {
                "drop": r"board 0: .*(closed|broke off).*",
                "short": r"board 0: no reply from socket://127\.0\.0\.1:\d+ within .*",
                "silent": r"board 0: no reply from socket://127\.0\.0\.1:\d+ within .*",
                "garbage": r"board 0: implausible reply over uart .*: ctrl_bus_errors went "
                r"from 0 to \d+ during a 16-word transfer \(a garbled link\?\)",
            }[fault]
            assert re.fullmatch(expected, message, re.S), message
            with pytest.raises(BoardError, match="its SoC is unknown after a failure"):
                read(hw, 0, SRAM)
            link.set_fault("none")
            hw.reset(0, quiet)
            assert read(hw, 0, SCRATCH).data == [0x12345678]
        finally:
            hw.close()


async def test_a_silent_board_fails_its_job_while_the_worker_serves_the_others(
    twins: TwinLab,
    hw_cache: Path,
    tmp_path: Path,
    client: httpx.AsyncClient,
    start_worker: Any,
    example: Read,
) -> None:
    """Through the API: board 0's link goes silent mid-session; its run fails within the
    bridge's deadline with a clear error, while board 1's runs go on being served; once
    the link is back a reset returns board 0 to service."""
    with FaultyLink("127.0.0.1", twins.twins[0].info.uart_port) as link:
        hw = backend_for(twins, hw_cache, tmp_path, uart0=link.port)
        try:
            await start_worker([0, 1], fake=hw, wait_healthy=False)

            async def all_good() -> bool:
                rows = [await board(client, b) for b in (0, 1)]
                return all(r["health"] == "good" and r["state"] == "idle" for r in rows)

            await wait_for(all_good, timeout=120)
            for b in (0, 1):
                await e2e.reserve_design(client, b, "accumulator.v", example("accumulator.v"))
            link.set_fault("silent")
            stuck = await e2e.post_run(client, 0, {"op": 2, "address": SRAM, "length": 8})
            served = 0
            while (await client.get(f"/fpga/0/jobs/{stuck}")).json()["status"] != "failed":
                await e2e.write(client, 1, USER, [served, 1])
                assert await e2e.read(client, 1, USER + 8) == [served + 1]
                served += 1
            assert served >= 2  # board 1 kept working while board 0's run waited
            job = (await client.get(f"/fpga/0/jobs/{stuck}")).json()
            assert re.fullmatch(
                r"board 0: no reply from socket://127\.0\.0\.1:\d+ within [\d.]+ s: read of 8 "
                r"words at 0x01000000 \(round trip 1 of 2\) got 0 of 32 bytes",
                job["error"],
            ), job["error"]
            row = await board(client, 0)
            assert row["state"] == "error" and row["health"] == "unknown", row
            link.set_fault("none")
            await e2e.reset(client, 0)
            assert (await board(client, 1))["state"] == "reserved"
        finally:
            hw.close()


def test_fpgalab_twin_serves_twins_and_writes_their_lab_file(tmp_path: Path) -> None:
    """`fpgalab twin` starts twins, writes a lab file the hardware backend accepts, answers
    XVC on each board's JTAG port, and stops cleanly on SIGTERM."""
    lab_file = tmp_path / "twins.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fpgalab.service.cli", "twin", "--boards", "2,5",
         "--lab-file", str(lab_file), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not lab_file.exists():
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "no lab file after 30 s"
            time.sleep(0.1)
        lab = parse_lab(lab_file.read_text(), str(lab_file))
        assert lab.board_ids == [2, 5]
        for spec in lab.boards.values():
            port = int(spec.program.command[spec.program.command.index("--port") + 1])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as xvc:
                xvc.sendall(b"getinfo:")
                assert xvc.recv(64).startswith(b"xvcServer_v1.0:")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "twin 2: uart socket://127.0.0.1:" in out


def test_a_programmer_that_fails_fails_the_load_with_its_message(
    twins: TwinLab, hw_cache: Path
) -> None:
    """No cable (nothing listens where openFPGALoader looks): the load fails with the
    tool's own last words and the board's SoC is unknown until a reset works."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    text = twins.lab_toml().replace(f"port = {twins.twins[0].info.xvc_port}", f"port = {port}")
    hw = HardwareBackend(lab=parse_lab(text, "twins.toml"), data_dir=hw_cache / "hardware")
    try:
        with pytest.raises(BoardError) as failed:
            hw.reset(0, quiet)
        assert re.fullmatch(
            r"board 0: programming: `openFPGALoader` failed with status 1: .*(connection|JTAG).*",
            str(failed.value),
        ), str(failed.value)
        assert hw.memory_map(0) is None
    finally:
        hw.close()


def test_a_failed_reset_power_cycles_the_board_and_tries_once_more(
    twins: TwinLab, hw_cache: Path, tmp_path: Path
) -> None:
    """A board whose load fails is power-cycled with the lab file's command, then the
    load is tried once more."""
    powered = tmp_path / "powered"
    xvc = twins.twins[0].info.xvc_port
    loader = f"test -f {powered} && exec openFPGALoader -c xvc-client --ip 127.0.0.1 --port {xvc}"
    text = twins.lab_toml().replace(
        f'program = {{ cable = "xvc-client", ip = "127.0.0.1", port = {xvc} }}',
        f'program = {{ command = ["sh", "-c", "{loader} {{bitstream}}"] }}\n'
        f'power_cycle = ["touch", "{powered}"]',
    )
    hw = HardwareBackend(lab=parse_lab(text, "twins.toml"), data_dir=hw_cache / "hardware")
    lines: list[str] = []
    try:
        hw.reset(0, lines.append)
        assert powered.exists()
        assert any("power-cycling board 0 and trying once more" in line for line in lines)
        assert text_of(read(hw, 0, IDENTIFIER, 64).data) == BASE_IDENT
    finally:
        hw.close()


def test_a_twins_uart_serves_only_the_labs_user(hw: HardwareBackend, twins: TwinLab) -> None:
    """Another local user connecting to a twin's UART (a tenant's board) is closed at once,
    and the lab's own connection carries on unharmed."""
    hw.reset(0, quiet)
    port = twins.twins[0].info.uart_port
    probe = run_as_nobody(TCP_PROBE, str(port), "020100000001")  # a read, in UARTBone
    assert probe.returncode == 0 and probe.stdout.strip() in ("b''", "ConnectionResetError"), (
        probe.stdout + probe.stderr
    )
    assert read(hw, 0, SCRATCH).data == [0x12345678]


def test_a_twin_refuses_a_bitstream_that_reaches_outside_its_slot(
    hw_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bitstream whose build has a top-level port the base SoC does not (planted in a
    copy of the cache: the builder itself refuses such designs) is refused by the twin,
    as a real lab's rules would, and the twin stays unconfigured."""
    loader = shutil.which("openFPGALoader")
    if loader is None:
        pytest.skip("openFPGALoader not installed")
    base = BitstreamBuilder(hw_cache / "hardware").base(quiet)
    builds = tmp_path / "lab" / "hardware" / "builds"
    planted = "f" * 64
    for key in (base.key, planted):
        shutil.copytree(base.folder, builds / key)
    info = json.loads((base.folder / "build.json").read_text())
    info.update(key=planted, filename="grabber.py", language="python")
    info["boundary"]["ports"]["user_led0"] = ["output", 1]
    (builds / planted / "build.json").chmod(0o644)
    (builds / planted / "build.json").write_text(json.dumps(info))
    index = tmp_path / "lab" / "hardware" / "by-sha256"
    index.mkdir()
    for form in loaded_forms(base.bit.read_bytes()):
        (index / hashlib.sha256(form).hexdigest()).write_text(planted)
    twins = TwinLab([0], tmp_path / "lab", run_dir=tmp_path / "twins")
    [twin] = twins.start()
    try:
        with caplog.at_level("WARNING", logger="fpgalab.twin"):
            subprocess.run(
                [loader, "-c", "xvc-client", "--ip", "127.0.0.1", "--port", str(twin.xvc_port),
                 str(base.bit)],
                capture_output=True, timeout=120, check=False,
            )  # fmt: skip
        assert twins.twins[0].running is None
        assert "top-level ports the lab's SoC does not have: `user_led0`" in caplog.text
    finally:
        twins.close()


def test_a_trace_through_uartbone(hw: HardwareBackend) -> None:
    """The scope of a board's SoC, armed, stopped and read back over UARTBone: the VCD has
    each access of the run, in order, and the counter probe's wrong value."""
    from fpgalab.hil.trace import scope_layout, to_vcd
    from tests.backends import test_trace_sim as trace

    hw.program(0, hw.build(Design("counter.py", trace.COUNTER), quiet), quiet)
    layout = scope_layout(hw.memory_map(0))
    assert layout is not None and (layout.depth, layout.clock_hz) == (512, 25_000_000)
    run = [Transaction(Op.WRITE, USER, (0,)) for _ in range(11)]
    run += [Transaction(Op.READ, USER), Transaction(Op.READ, USER + 20, length=2)]
    signals = ["we", "adr", "dat_w", "dat_r", "ack", "count"]
    results, capture = trace.traced(hw, layout, run, signals)
    assert [r.data for r in results if r.data] == [[0], [5, 6]]
    assert not capture.full
    changes = trace.parse_vcd(to_vcd(layout, capture, signals))
    acks = [t for t, v in changes["ack"] if v == 1]
    assert [trace.value_at(changes["adr"], t) for t in acks] == [0] * 12 + [5, 6]
    assert [trace.value_at(changes["we"], t) for t in acks] == [1] * 11 + [0] * 3
    assert [trace.value_at(changes["count"], t) for t in acks] == [*range(1, 11), 0, 0, 0, 0]
