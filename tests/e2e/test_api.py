"""The simulated lab through the REST API: the app, an in-process worker and a real
``SimBackend`` (LiteX SoC, Verilator model, cocotb board) behind it.

Builds share the session's build cache (``sim_cache``), so each design is compiled
once per run; every test has its own Redis database, worker and simulators.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.base import Op, Transaction
from backends.sim import SimBackend
from tests.helpers import assert_error, board, submit, wait_for, wait_job, wait_state

pytestmark = pytest.mark.sim

DOCS = Path(__file__).resolve().parents[2] / "docs"

CSR = 0x0000_0000
SCRATCH = 0x0000_0004
IDENTIFIER = 0x0000_0800
SRAM = 0x0100_0000
USER = 0x2000_0000
UNMAPPED = 0x4000_0000
DESIGN_ID = 0xC0FFEE01
BASE_IDENT = "fpgalab sim base SoC"
#: LiteX's csr.json lower-cases every string constant, the identifier included.
MAP_BASE_IDENT = BASE_IDENT.lower()
#: Generous: a cold build of one design while the other xdist worker builds too.
BUILD_TIMEOUT = 100.0
#: A run job is bounded: the bus timeout is 4,096 cycles (about 5 ms of simulation).
RUN_TIMEOUT = 10.0

Read = Callable[[str], bytes]
StartLab = Callable[[Sequence[int]], Awaitable[httpx.AsyncClient]]


def _quiet(line: str) -> None:
    pass


@pytest.fixture
async def sim_lab(sim: SimBackend, client: httpx.AsyncClient, start_worker: Any) -> StartLab:
    """Start a worker driving ``sim`` for some boards; the API client once all are good.

    ``sim`` comes first so that it is closed after the worker has stopped."""
    # The base SoC (what health checks and resets load) is built before the worker
    # starts, so that its boards' first health checks do not all wait on a cold build.
    await asyncio.to_thread(sim.builder.base, _quiet)

    async def start(boards: Sequence[int]) -> httpx.AsyncClient:
        await start_worker(boards, fake=sim, wait_healthy=False)

        async def all_good() -> bool:
            rows = [await board(client, b) for b in boards]
            return all(row["health"] == "good" and row["state"] == "idle" for row in rows)

        await wait_for(all_good, timeout=60)
        return client

    return start


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
    job = await wait_job(client, fpga_id, r.json()["job_id"], timeout=30)
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


def backend_read(sim: SimBackend, fpga_id: int, address: int, length: int = 1) -> Any:
    """One read through the very backend the worker drives (no job involved)."""
    return sim.transact(fpga_id, Transaction(Op.READ, address, length=length))


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The simulator ``pid`` frozen (SIGSTOP) for the block; continued afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def exited(pid: int) -> bool:
    """Our child ``pid`` has died, all its threads too (left for SimBoard to reap)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Designs through the API ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["accumulator.py", "accumulator.v"])
async def test_example_design_computes_through_run_jobs(
    sim_lab: StartLab, example: Read, name: str
) -> None:
    """Each example design reserves its board, and run jobs see its registers compute."""
    lab = await sim_lab([0])
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
    assert failed["error"] == "bus error at 0x20000020 (word 0 of 1)"
    assert result == {"ok": False, "data": [], "error": failed["error"]}
    assert (await board(lab, 0))["state"] == "reserved"
    assert await read(lab, 0, USER) == [1234]


async def test_sram_4096_words_read_back_word_for_word(sim_lab: StartLab, example: Read) -> None:
    """A 4,096-word write to SRAM reads back with every word at its own address."""
    lab = await sim_lab([0])
    await reserve_design(lab, 0, "accumulator.v", example("accumulator.v"))
    words = [random.getrandbits(32) for _ in range(4096)]
    await write(lab, 0, SRAM, words)
    assert await read(lab, 0, SRAM, 4096) == words
    # Windows that start and end inside the transfer (and inside bursts).
    assert await read(lab, 0, SRAM + 4 * 255, 3) == words[255:258]
    assert await read(lab, 0, SRAM + 4 * 4095) == [words[4095]]
    assert await read(lab, 0, SRAM + 4 * 4096) == [0]  # just past it: untouched


async def test_result_of_a_read_job(sim_lab: StartLab, example: Read) -> None:
    """A read job's record says complete and its result holds the words the SoC returned."""
    lab = await sim_lab([0])
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
    sim_lab: StartLab, example: Read
) -> None:
    """A new design's log shows elaboration then Verilator as they happen; the same
    design submitted again is served from the build cache (no Verilator run)."""
    lab = await sim_lab([0])
    # A design this run has never built: a comment makes it new to the cache.
    source = example("accumulator.py") + f"# run {uuid.uuid4().hex}\n".encode()
    r = await submit(lab, 0, source.decode(), "fresh.py")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    async def elaboration_logged_while_building() -> bool:
        text = await logs(lab, 0, job_id)
        status = (await lab.get(f"/fpga/0/jobs/{job_id}")).json()["status"]
        assert not ("step 1/2" not in text and status in ("complete", "failed")), text
        return "sim: step 1/2: elaborate the SoC with LiteX" in text and status == "running"

    await wait_for(elaboration_logged_while_building, timeout=BUILD_TIMEOUT)
    job = await wait_job(lab, 0, job_id, timeout=BUILD_TIMEOUT)
    assert job["status"] == "complete", job
    text = await logs(lab, 0, job_id)
    steps = [
        "fpgalab: building fresh.py",
        "sim: step 1/2: elaborate the SoC with LiteX",
        "elaborate: wrote lab_soc.v",
        "sim: step 2/2: compile the model with Verilator",
        "V e r i l a t i o n   R e p o r t",
        "sim: model built in",
        "fpgalab: build done in",
        "fpgalab: board 0 programmed",
    ]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (positions, text)
    ident = (await memory_map(lab, 0))["constants"]["config_identifier"]

    await reset(lab, 0, "release")
    again = await reserve_design(lab, 0, "renamed.py", source)
    text = await logs(lab, 0, again["job_id"])
    assert re.search(r"sim: build cache hit [0-9a-f]{12}: model reused", text), text
    assert "fpgalab: build cache hit in" in text
    assert "verilator" not in text.lower() and "step 1/2" not in text, text
    assert (await memory_map(lab, 0))["constants"]["config_identifier"] == ident
    assert await read(lab, 0, USER + 16) == [DESIGN_ID]


# The memory map and the base SoC --------------------------------------------------------------


async def test_memory_map_names_the_user_region_as_documented(
    sim_lab: StartLab, example: Read
) -> None:
    """GET memory-map serves the csr.json of what is on the board; its regions are
    the ones docs/memory-map.md lists, and the identifier read over the bus agrees."""
    lab = await sim_lab([1])
    documented = documented_regions()
    assert set(documented) == {"csr", "sram", "user"}
    assert documented["user"] == {"base": USER, "size": 16 << 20}

    base = await memory_map(lab, 1)
    assert base["constants"]["config_identifier"] == MAP_BASE_IDENT
    job = await reserve_design(lab, 1, "accumulator.v", example("accumulator.v"))
    mine = await memory_map(lab, 1)
    for found in (base, mine):
        regions = {k: {"base": v["base"], "size": v["size"]} for k, v in found["memories"].items()}
        assert regions == documented
        assert found["csr_bases"] == {"ctrl": CSR, "identifier_mem": IDENTIFIER}
    ident = mine["constants"]["config_identifier"]
    assert re.fullmatch(r"fpgalab sim design [0-9a-f]{12}", ident), ident
    assert ident[-12:] in await logs(lab, 1, job["job_id"])  # the build key the job used
    assert text_of(await read(lab, 1, IDENTIFIER, 64)) == ident
    # The user region's first word is the design's word 0 (user_base + 4k is word k).
    await write(lab, 1, mine["memories"]["user"]["base"], [7])
    assert await read(lab, 1, USER + 8) == [7]  # A + B with B = 0


async def test_release_brings_back_the_base_soc(
    sim_lab: StartLab, sim: SimBackend, example: Read
) -> None:
    """After release the board is idle with the base SoC: its identifier, fresh SRAM,
    and an empty user slot that answers with a bus error."""
    lab = await sim_lab([2])
    await reserve_design(lab, 2, "accumulator.py", example("accumulator.py"))
    await write(lab, 2, SRAM, [0xDEAD_BEEF])
    assert text_of(await read(lab, 2, IDENTIFIER, 64)).startswith("fpgalab sim design ")

    job = await reset(lab, 2, "release")
    text = await logs(lab, 2, job["job_id"])
    assert f"identifier {BASE_IDENT!r}" in text, text  # read from the board as it came up
    assert (await memory_map(lab, 2))["constants"]["config_identifier"] == MAP_BASE_IDENT
    # An idle board takes no run jobs: read it through the worker's own backend.
    assert_error(
        await lab.post("/fpga/2/run", json={"op": 2, "address": 0}), 409, "fpga_not_reserved"
    )
    ident = backend_read(sim, 2, IDENTIFIER, 64)
    assert ident.ok and text_of(ident.data) == BASE_IDENT
    assert backend_read(sim, 2, SRAM).data == [0]
    empty = backend_read(sim, 2, USER)
    assert not empty.ok and empty.error == "bus error at 0x20000000 (word 0 of 1)"


# Failures -------------------------------------------------------------------------------------

BROKEN_PYTHON = (
    b"from migen import Module\n\n"
    b"class Design(Module):\n"
    b"    def __init__(self):\n"
    b"        self.bus = not_defined_anywhere\n"
)


@pytest.mark.parametrize(
    ("filename", "error", "logged"),
    [
        (
            "broken.py",
            r"broken\.py:5: NameError: name 'not_defined_anywhere' is not defined",
            'File "broken.py", line 5, in __init__',
        ),
        ("broken.v", r"%Error: broken\.v:\d+:\d+: syntax error, .*", "%Error: "),
    ],
)
async def test_broken_design_fails_the_build_and_reset_recovers(
    sim_lab: StartLab, example: Read, filename: str, error: str, logged: str
) -> None:
    """A design that does not build fails its job with the real error (one line, full
    story in the logs); the board is in error with good health until a reset."""
    lab = await sim_lab([3])
    if filename.endswith(".py"):
        source = BROKEN_PYTHON
    else:
        source = example("accumulator.v").replace(b"wb_ack <= 1'b1;", b"wb_ack <= 1'b1", 1)
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
        assert "sim: step 2/2: compile the model with Verilator" in text
    row = await board(lab, 3)
    assert row["state"] == "error" and row["health"] == "good", row  # the user's fault
    await reset(lab, 3)
    await reserve_design(lab, 3, "accumulator.py", example("accumulator.py"))
    assert await read(lab, 3, USER + 16) == [DESIGN_ID]


@pytest.mark.parametrize("when", ["before", "during"])
async def test_killed_simulator_fails_the_run_and_reset_recovers(
    sim_lab: StartLab, sim: SimBackend, example: Read, when: str
) -> None:
    """A simulator killed before or during a run fails that job with a clear error,
    puts the board in error with unknown health, and a reset brings it back."""
    lab = await sim_lab([4])
    await reserve_design(lab, 4, "accumulator.v", example("accumulator.v"))
    pid = sim.board(4).pid
    assert pid is not None
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
    # "during" unless the kill landed before the worker's thread sent the request; a
    # request cut short also names the socket error ("Connection reset by peer").
    crashed = r"board 4: the simulator crashed \(SIGKILL\) (before|during) the request( \(.+\))?"
    if when == "before":
        crashed = r"board 4: the simulator crashed \(SIGKILL\) before the request"
    assert re.fullmatch(crashed, job["error"]), job["error"]
    result = await result_of(lab, 4, job_id)
    assert result == {"ok": False, "data": [], "error": job["error"]}
    row = await board(lab, 4)
    assert row["state"] == "error" and row["health"] == "unknown", row
    assert "SIGKILL" in (row["health_reason"] or "")
    assert_error(
        await lab.post("/fpga/4/run", json={"op": 2, "address": 0}), 409, "fpga_not_reserved"
    )

    await reset(lab, 4)
    assert sim.board(4).pid not in (None, pid)
    await reserve_design(lab, 4, "accumulator.v", example("accumulator.v"))
    assert await read(lab, 4, SCRATCH) == [0x12345678]
    await write(lab, 4, USER, [40, 2])
    assert await read(lab, 4, USER + 8) == [42]


async def test_unmapped_address_fails_the_run_with_a_bus_timeout(
    sim_lab: StartLab, example: Read
) -> None:
    """A read nobody answers ends as a failed run with ok false and the bus timeout,
    well within the run's time limit; the board stays reserved and keeps working."""
    lab = await sim_lab([5])
    await reserve_design(lab, 5, "accumulator.py", example("accumulator.py"))
    job, result = await run(lab, 5, {"op": 2, "address": UNMAPPED, "length": 4})
    message = "bus timeout at 0x40000000 (word 0 of 4): no slave answered within 4096 cycles"
    assert job["status"] == "failed" and job["error"] == message
    assert result == {"ok": False, "data": [], "error": message}
    # A write that runs off the end of SRAM keeps the words before the hole.
    job, result = await run(lab, 5, {"op": 1, "address": SRAM + 0x4_0000 - 8, "data": [1, 2, 3]})
    assert job["status"] == "failed" and result["ok"] is False
    assert result["error"].startswith("bus timeout at 0x01040000 (word 2 of 3)")
    assert await read(lab, 5, SRAM + 0x4_0000 - 8, 2) == [1, 2]
    assert (await read(lab, 5, CSR + 8))[0] == 2  # ctrl_bus_errors counted both
    row = await board(lab, 5)
    assert row["state"] == "reserved" and row["health"] == "good"


# Several boards -------------------------------------------------------------------------------


async def test_two_boards_busy_at_once(sim_lab: StartLab, sim: SimBackend, example: Read) -> None:
    """While one board's run is stuck in its simulator, the other board's runs go on;
    each board keeps its own memory."""
    lab = await sim_lab([6, 7])
    await asyncio.gather(
        reserve_design(lab, 6, "accumulator.py", example("accumulator.py")),
        reserve_design(lab, 7, "accumulator.v", example("accumulator.v")),
    )
    pid = sim.board(6).pid
    assert pid is not None
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
    sim_lab: StartLab, sim: SimBackend, example: Read
) -> None:
    """All ten boards reserved at once each run their own simulator, and while nobody
    talks to them the simulators use (almost) no CPU."""
    boards = range(10)
    lab = await sim_lab(boards)
    names = ["accumulator.py", "accumulator.v"]
    await asyncio.gather(
        *(reserve_design(lab, b, names[b % 2], example(names[b % 2])) for b in boards)
    )
    rows = [await board(lab, b) for b in boards]
    assert all(row["state"] == "reserved" for row in rows), rows
    await asyncio.gather(*(write(lab, b, USER, [b, 100]) for b in boards))
    sums = await asyncio.gather(*(read(lab, b, USER + 8) for b in boards))
    assert sums == [[b + 100] for b in boards]

    pids = [sim.board(b).pid for b in boards]
    assert None not in pids and len(set(pids)) == 10
    before = [cpu_seconds(pid) for pid in pids if pid]
    await asyncio.sleep(1.0)
    used = sum(cpu_seconds(pid) for pid in pids if pid) - sum(before)
    assert used < 0.05, f"ten idle simulators used {used:.2f} s of CPU in 1 s"
