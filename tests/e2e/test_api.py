"""The lab through the REST API, end to end: the app, an in-process worker and a real
backend behind it: the simulated lab by default, the hardware backend against twins
with ``--backend hardware``, or real boards with ``--lab FILE`` (see conftest.py).

Builds share the session's build cache, so each design is built once per run; every
test has its own Redis database, worker and boards.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.backends.base import Op, Transaction
from fpgalab.sim.board import exited
from tests.e2e.conftest import LabUnderTest, StartLab
from tests.helpers import REPO, assert_error, board, submit, wait_for, wait_job, wait_state

pytestmark = pytest.mark.sim

DOCS = REPO / "docs"

CSR = 0x0000_0000
SCRATCH = 0x0000_0004
IDENTIFIER = 0x0000_0800
SCOPE = 0x0000_1000
SRAM = 0x0100_0000
USER = 0x2000_0000
UNMAPPED = 0x4000_0000
DESIGN_ID = 0xC0FFEE01
#: Generous: a cold build of one design while the other xdist worker builds too.
BUILD_TIMEOUT = 150.0
#: A run job is bounded: the bus timeout is 4,096 cycles; on hardware the bridge's deadline.
RUN_TIMEOUT = 20.0

Read = Callable[[str], bytes]


# API shortcuts -------------------------------------------------------------------------------


async def reserve_design(
    client: httpx.AsyncClient, fpga_id: int, filename: str, source: bytes
) -> dict[str, Any]:
    """Submit ``source`` and wait until the board is reserved; the finished build job."""
    r = await submit(client, fpga_id, source.decode(), filename)
    assert r.status_code == 202, r.text
    job = await wait_job(client, fpga_id, r.json()["job_id"], timeout=BUILD_TIMEOUT)
    assert job["status"] == "complete", (job, await logs(client, fpga_id, job["job_id"]))
    assert (await board(client, fpga_id))["state"] == "reserved"
    return job


async def logs(client: httpx.AsyncClient, fpga_id: int, job_id: str) -> str:
    r = await client.get(f"/fpga/{fpga_id}/jobs/{job_id}/logs")
    assert r.status_code == 200, r.text
    return r.text


async def post_run(client: httpx.AsyncClient, fpga_id: int, body: dict[str, Any]) -> str:
    r = await client.post(f"/fpga/{fpga_id}/run", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def result_of(client: httpx.AsyncClient, fpga_id: int, job_id: str) -> dict[str, Any]:
    r = await client.get(f"/fpga/{fpga_id}/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def run(
    client: httpx.AsyncClient, fpga_id: int, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST a run job and wait for it: (the job record, its result)."""
    job_id = await post_run(client, fpga_id, body)
    job = await wait_job(client, fpga_id, job_id, timeout=RUN_TIMEOUT)
    return job, await result_of(client, fpga_id, job_id)


async def write(client: httpx.AsyncClient, fpga_id: int, address: int, words: list[int]) -> None:
    job, result = await run(client, fpga_id, {"op": 1, "address": address, "data": words})
    assert job["status"] == "complete" and result == {"ok": True, "data": [], "error": None}, (
        job,
        result,
    )


async def read(client: httpx.AsyncClient, fpga_id: int, address: int, length: int = 1) -> list[int]:
    job, result = await run(client, fpga_id, {"op": 2, "address": address, "length": length})
    assert job["status"] == "complete" and result["ok"] is True, (job, result)
    assert result["error"] is None and len(result["data"]) == length
    return result["data"]  # type: ignore[no-any-return]


def text_of(words: list[int]) -> str:
    """The identifier's words (one character each, NUL-terminated) as text."""
    assert 0 in words, words
    return bytes(w & 0xFF for w in words[: words.index(0)]).decode("ascii")


async def memory_map(client: httpx.AsyncClient, fpga_id: int) -> dict[str, Any]:
    r = await client.get(f"/fpga/{fpga_id}/memory-map")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def reset(client: httpx.AsyncClient, fpga_id: int, how: str = "reset") -> dict[str, Any]:
    """Reset (or release) the board; the finished reset job, once the board is idle."""
    path = "session/release" if how == "release" else "reset"
    r = await client.post(f"/fpga/{fpga_id}/{path}")
    assert r.status_code == 202, r.text
    job = await wait_job(client, fpga_id, r.json()["job_id"], timeout=60)
    assert job["type"] == "reset" and job["status"] == "complete", job
    row = await wait_state(client, fpga_id, "idle")
    assert row["health"] == "good", row
    return job


def documented_regions() -> dict[str, dict[str, int]]:
    """The region table of docs/memory-map.md: name -> base and size in bytes."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    found = {}
    row = re.compile(r"^\| `(\w+)`\s*\| `0x([0-9A-Fa-f_]+)` \| (\d+) (KiB|MiB|GiB)\s*\|", re.M)
    for name, base, size, unit in row.findall((DOCS / "memory-map.md").read_text()):
        found[name] = {"base": int(base.replace("_", ""), 16), "size": int(size) * units[unit]}
    return found


def backend_read(target: LabUnderTest, fpga_id: int, address: int, length: int = 1) -> Any:
    """One read through the very backend the worker drives (no job involved)."""
    return target.backend.transact(fpga_id, Transaction(Op.READ, address, length=length))


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The simulator ``pid`` frozen (SIGSTOP) for the block; continued afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Designs through the API ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["accumulator.py", "accumulator.v"])
async def test_example_design_computes_through_run_jobs(
    start_lab: StartLab, target: LabUnderTest, example: Read, name: str
) -> None:
    """Each example design reserves its board, and run jobs see its registers compute."""
    lab = await start_lab([0])
    job = await reserve_design(lab, 0, name, example(name))
    assert job["type"] == "build_and_program" and job["filename"] == name

    await write(lab, 0, USER, [1234, 4321])
    assert await read(lab, 0, USER, 3) == [1234, 4321, 5555]  # A, B, A + B
    await write(lab, 0, USER + 8, [99])  # A + B is read-only
    assert await read(lab, 0, USER + 8) == [5555]
    for value in (5, 7, 30):
        await write(lab, 0, USER + 12, [value])
    assert await read(lab, 0, USER + 12) == [42]  # the accumulator
    assert await read(lab, 0, USER + 16) == [DESIGN_ID]
    [first] = await read(lab, 0, USER + 20)
    [second] = await read(lab, 0, USER + 20)
    assert second > first  # the cycle counter runs

    # Word 8 and above: the design answers err; the run fails, the board stays reserved.
    failed, result = await run(lab, 0, {"op": 2, "address": USER + 32})
    assert failed["status"] == "failed"
    assert re.fullmatch(target.bus_error(USER + 32, 0, 1), failed["error"]), failed["error"]
    assert result == {"ok": False, "data": [], "error": failed["error"]}
    assert (await board(lab, 0))["state"] == "reserved"
    assert await read(lab, 0, USER) == [1234]


async def test_sram_4096_words_read_back_word_for_word(start_lab: StartLab, example: Read) -> None:
    """A 4,096-word write to SRAM reads back with every word at its own address."""
    lab = await start_lab([0])
    await reserve_design(lab, 0, "accumulator.v", example("accumulator.v"))
    words = [random.getrandbits(32) for _ in range(4096)]
    await write(lab, 0, SRAM, words)
    assert await read(lab, 0, SRAM, 4096) == words
    # Windows that start and end inside the transfer (and inside bursts).
    assert await read(lab, 0, SRAM + 4 * 255, 3) == words[255:258]
    assert await read(lab, 0, SRAM + 4 * 4095) == [words[4095]]
    assert await read(lab, 0, SRAM + 4 * 4096) == [0]  # just past it: untouched


async def test_result_of_a_read_job(start_lab: StartLab, example: Read) -> None:
    """A read job's record says complete and its result holds the words the SoC returned."""
    lab = await start_lab([0])
    await reserve_design(lab, 0, "accumulator.py", example("accumulator.py"))
    await write(lab, 0, SCRATCH, [0x5555_AAAA])
    job_id = await post_run(lab, 0, {"op": 2, "address": CSR, "length": 3})
    job = await wait_job(lab, 0, job_id, timeout=RUN_TIMEOUT)
    assert job["type"] == "run" and job["status"] == "complete" and job["error"] is None
    assert job["started_at"] and job["finished_at"]
    # ctrl_reset, ctrl_scratch (as written), ctrl_bus_errors
    assert await result_of(lab, 0, job_id) == {
        "ok": True,
        "data": [0, 0x5555_AAAA, 0],
        "error": None,
    }


async def test_build_logs_show_the_steps_and_a_resubmit_is_a_cache_hit(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """A new design's log shows the build's steps as they happen; the same design
    submitted again is served from the build cache (no tool runs)."""
    lab = await start_lab([0])
    # A design this run has never built: a comment makes it new to the cache.
    source = example("accumulator.py") + f"# run {uuid.uuid4().hex}\n".encode()
    r = await submit(lab, 0, source.decode(), "fresh.py")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    async def elaboration_logged_while_building() -> bool:
        text = await logs(lab, 0, job_id)
        status = (await lab.get(f"/fpga/0/jobs/{job_id}")).json()["status"]
        first = target.build_steps[0]
        assert not (first not in text and status in ("complete", "failed")), text
        return first in text and status == "running"

    await wait_for(elaboration_logged_while_building, timeout=BUILD_TIMEOUT)
    job = await wait_job(lab, 0, job_id, timeout=BUILD_TIMEOUT)
    assert job["status"] == "complete", job
    text = await logs(lab, 0, job_id)
    steps = [
        "fpgalab: building fresh.py",
        *target.build_steps,
        "fpgalab: build done in",
        "fpgalab: board 0 programmed",
    ]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (positions, text)
    ident = (await memory_map(lab, 0))["constants"]["config_identifier"]

    await reset(lab, 0, "release")
    again = await reserve_design(lab, 0, "renamed.py", source)
    text = await logs(lab, 0, again["job_id"])
    assert "fpgalab: build reused from the lab's cache (you built this design before) in" in text
    assert not [word for word in target.not_on_cache_hit if word in text.lower()], text
    assert (await memory_map(lab, 0))["constants"]["config_identifier"] == ident
    assert await read(lab, 0, USER + 16) == [DESIGN_ID]


# The memory map and the base SoC --------------------------------------------------------------


async def test_memory_map_names_the_user_region_as_documented(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """GET memory-map serves the csr.json of what is on the board; its regions are
    the ones docs/memory-map.md lists, and the identifier read over the bus agrees."""
    lab = await start_lab([1])
    documented = documented_regions()
    assert set(documented) == {"csr", "sram", "scope", "user"}
    documented["sram"]["size"] = target.sram_size  # docs/memory-map.md gives both
    # four words a sample without probes: 127 bits (docs/memory-map.md, "The scope")
    documented["scope"]["size"] = 16 * target.scope_depth
    assert documented["user"] == {"base": USER, "size": 16 << 20}

    base = await memory_map(lab, 1)
    # LiteX's csr.json lower-cases every string constant, the identifier included.
    assert base["constants"]["config_identifier"] == target.base_ident.lower()
    job = await reserve_design(lab, 1, "accumulator.v", example("accumulator.v"))
    mine = await memory_map(lab, 1)
    for found in (base, mine):
        regions = {k: {"base": v["base"], "size": v["size"]} for k, v in found["memories"].items()}
        assert regions == documented
        assert found["csr_bases"] == {"ctrl": CSR, "identifier_mem": IDENTIFIER, "scope": SCOPE}
    ident = mine["constants"]["config_identifier"]
    assert re.fullmatch(target.design_ident, ident), ident
    assert ident[-12:] in await logs(lab, 1, job["job_id"])  # the build key the job used
    assert text_of(await read(lab, 1, IDENTIFIER, 64)) == ident
    # The user region's first word is the design's word 0 (user_base + 4k is word k).
    await write(lab, 1, mine["memories"]["user"]["base"], [7])
    assert await read(lab, 1, USER + 8) == [7]  # A + B with B = 0


async def test_release_brings_back_the_base_soc(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """After release the board is idle with the base SoC: its identifier, fresh SRAM,
    and an empty user slot that answers with a bus error."""
    lab = await start_lab([2])
    await reserve_design(lab, 2, "accumulator.py", example("accumulator.py"))
    await write(lab, 2, SRAM, [0xDEAD_BEEF])
    assert re.fullmatch(target.design_ident, text_of(await read(lab, 2, IDENTIFIER, 64)))

    job = await reset(lab, 2, "release")
    text = await logs(lab, 2, job["job_id"])
    # read from the board as it came up
    assert f"identifier {target.base_ident!r}" in text, text
    assert (await memory_map(lab, 2))["constants"]["config_identifier"] == target.base_ident.lower()
    # An idle board takes no run jobs: read it through the worker's own backend.
    assert_error(
        await lab.post("/fpga/2/run", json={"op": 2, "address": 0}), 409, "fpga_not_reserved"
    )
    ident = backend_read(target, 2, IDENTIFIER, 64)
    assert ident.ok and text_of(ident.data) == target.base_ident
    assert backend_read(target, 2, SRAM).data == [0]
    empty = backend_read(target, 2, USER)
    assert not empty.ok and re.fullmatch(target.bus_error(USER, 0, 1), empty.error)


# Failures -------------------------------------------------------------------------------------

BROKEN_PYTHON = (
    b"from migen import Module\n\n"
    b"class Design(Module):\n"
    b"    def __init__(self):\n"
    b"        self.bus = not_defined_anywhere\n"
)


@pytest.mark.parametrize("filename", ["broken.py", "broken.v"])
async def test_broken_design_fails_the_build_and_reset_recovers(
    start_lab: StartLab, target: LabUnderTest, example: Read, filename: str
) -> None:
    """A design that does not build fails its job with the real error (one line, full
    story in the logs); the board is in error with good health until a reset."""
    lab = await start_lab([3])
    if filename.endswith(".py"):
        source = BROKEN_PYTHON
        error = r"broken\.py:5: NameError: name 'not_defined_anywhere' is not defined"
        logged = 'File "broken.py", line 5, in __init__'
    else:
        source = example("accumulator.v").replace(b"wb_ack <= 1'b1;", b"wb_ack <= 1'b1", 1)
        error, logged = target.verilog_syntax_error
    r = await submit(lab, 3, source.decode(), filename)
    assert r.status_code == 202, r.text
    job = await wait_job(lab, 3, r.json()["job_id"], timeout=BUILD_TIMEOUT)
    assert job["status"] == "failed"
    assert re.fullmatch(error, job["error"]), job["error"]
    text = await logs(lab, 3, job["job_id"])
    assert logged in text and f"error: {job['error']}" in text, text
    if filename.endswith(".py"):
        assert "Traceback (most recent call last)" in text
    else:
        assert target.build_steps[2 if target.kind == "sim" else 1] in text  # the compiler's step
    row = await board(lab, 3)
    assert row["state"] == "error" and row["health"] == "good", row  # the user's fault
    await reset(lab, 3)
    await reserve_design(lab, 3, "accumulator.py", example("accumulator.py"))
    assert await read(lab, 3, USER + 16) == [DESIGN_ID]


@pytest.mark.parametrize("when", ["before", "during"])
async def test_killed_simulator_fails_the_run_and_reset_recovers(
    start_lab: StartLab, target: LabUnderTest, example: Read, when: str
) -> None:
    """A simulator killed before or during a run fails that job with a clear error,
    puts the board in error with unknown health, and a reset brings it back."""
    lab = await start_lab([4])
    await reserve_design(lab, 4, "accumulator.v", example("accumulator.v"))
    pid = target.pid(4)
    if when == "before":
        os.kill(pid, signal.SIGKILL)

        async def gone() -> bool:
            return exited(pid)

        await wait_for(gone)
        job_id = await post_run(lab, 4, {"op": 2, "address": SCRATCH})
    else:
        with stopped(pid):  # frozen: the run is taken and waits for its answer
            job_id = await post_run(lab, 4, {"op": 2, "address": SCRATCH})

            async def running() -> bool:
                return (await lab.get(f"/fpga/4/jobs/{job_id}")).json()["status"] == "running"

            await wait_for(running)
            await asyncio.sleep(0.2)  # let the worker's thread send the request
            os.kill(pid, signal.SIGKILL)
    job = await wait_job(lab, 4, job_id, timeout=RUN_TIMEOUT)
    assert job["status"] == "failed"
    assert re.fullmatch(target.crashed(4, when), job["error"]), job["error"]
    result = await result_of(lab, 4, job_id)
    assert result == {"ok": False, "data": [], "error": job["error"]}
    row = await board(lab, 4)
    assert row["state"] == "error" and row["health"] == "unknown", row
    assert row["health_reason"] == job["error"], row
    assert_error(
        await lab.post("/fpga/4/run", json={"op": 2, "address": 0}), 409, "fpga_not_reserved"
    )

    await reset(lab, 4)
    assert target.pid(4) != pid
    await reserve_design(lab, 4, "accumulator.v", example("accumulator.v"))
    assert await read(lab, 4, SCRATCH) == [0x12345678]
    await write(lab, 4, USER, [40, 2])
    assert await read(lab, 4, USER + 8) == [42]


async def test_unmapped_address_fails_the_run_with_a_bus_timeout(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """A read nobody answers ends as a failed run with ok false and the bus timeout,
    well within the run's time limit; the board stays reserved and keeps working."""
    lab = await start_lab([5])
    await reserve_design(lab, 5, "accumulator.py", example("accumulator.py"))
    job, result = await run(lab, 5, {"op": 2, "address": UNMAPPED, "length": 4})
    message = job["error"]
    assert job["status"] == "failed" and re.fullmatch(target.bus_timeout(UNMAPPED, 0, 4), message)
    assert "within 4096 cycles" in message
    assert result == {"ok": False, "data": [], "error": message}
    # A write that runs off the end of SRAM keeps the words before the hole.
    end = SRAM + target.sram_size
    job, result = await run(lab, 5, {"op": 1, "address": end - 8, "data": [1, 2, 3]})
    assert job["status"] == "failed" and result["ok"] is False
    assert re.match(target.write_hole(end, 2, 3), result["error"]), result["error"]
    assert await read(lab, 5, end - 8, 2) == [1, 2]
    # ctrl_bus_errors counted them
    assert (await read(lab, 5, CSR + 8))[0] == target.timeouts_counted(4, 1)
    row = await board(lab, 5)
    assert row["state"] == "reserved" and row["health"] == "good"


# Several boards -------------------------------------------------------------------------------


async def test_two_boards_busy_at_once(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """While one board's run is stuck in its simulator, the other board's runs go on;
    each board keeps its own memory."""
    lab = await start_lab([6, 7])
    await asyncio.gather(
        reserve_design(lab, 6, "accumulator.py", example("accumulator.py")),
        reserve_design(lab, 7, "accumulator.v", example("accumulator.v")),
    )
    pid = target.pid(6)
    six = [random.getrandbits(32) for _ in range(1024)]
    seven = [random.getrandbits(32) for _ in range(1024)]
    with stopped(pid):
        stuck = await post_run(lab, 6, {"op": 1, "address": SRAM, "data": six})

        async def running() -> bool:
            return (await lab.get(f"/fpga/6/jobs/{stuck}")).json()["status"] == "running"

        await wait_for(running)
        await write(lab, 7, SRAM, seven)
        assert await read(lab, 7, SRAM, 1024) == seven
        assert (await lab.get(f"/fpga/6/jobs/{stuck}")).json()["status"] == "running"
    job = await wait_job(lab, 6, stuck, timeout=RUN_TIMEOUT)
    assert job["status"] == "complete", job
    assert await read(lab, 6, SRAM, 1024) == six
    assert await read(lab, 7, SRAM, 1024) == seven


async def test_ten_boards_reserved_at_once_and_idle_simulators_are_parked(
    start_lab: StartLab, target: LabUnderTest, example: Read
) -> None:
    """All ten boards reserved at once each run their own simulator, and while nobody
    talks to them the simulators use (almost) no CPU."""
    boards = range(10)
    lab = await start_lab(boards)
    names = ["accumulator.py", "accumulator.v"]
    await asyncio.gather(
        *(reserve_design(lab, b, names[b % 2], example(names[b % 2])) for b in boards)
    )
    rows = [await board(lab, b) for b in boards]
    assert all(row["state"] == "reserved" for row in rows), rows
    await asyncio.gather(*(write(lab, b, USER, [b, 100]) for b in boards))
    sums = await asyncio.gather(*(read(lab, b, USER + 8) for b in boards))
    assert sums == [[b + 100] for b in boards]

    pids = [target.pid(b) for b in boards]
    assert len(set(pids)) == 10
    before = [cpu_seconds(pid) for pid in pids if pid]
    await asyncio.sleep(1.0)
    used = sum(cpu_seconds(pid) for pid in pids if pid) - sum(before)
    assert used < 0.05, f"ten idle simulators used {used:.2f} s of CPU in 1 s"
