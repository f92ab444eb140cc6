"""The client on pools, through real HTTP (a lab under uvicorn on the FakeBackend test
double): ``reserve(None, ..., platform=, tags=)`` takes the first free board that fits,
waits its turn for one, and gives back what it holds if it stops waiting; the pool job's
own calls; a lab without pools (a test double of one) still reserves an idle board."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

import fpgalab.client as fc
from fpgalab.client import AsyncClient, Client
from tests.client.conftest import ALICE, BOB, DESIGN, KEYS, LiveLab, StartLab, board_state, client

#: Boards 0-1 sim with tag dsp, 2 sim with tag slow, 3 ulx3s: the lab's other six are
#: registered (sim, no tags) but no worker serves them.
INVENTORY = {0: ("sim", ("dsp",)), 1: ("sim", ("dsp",)), 2: ("sim", ("slow",)), 3: ("ulx3s", ())}
USER = 0x2000_0000


@pytest.fixture
def pool_lab(start_lab: StartLab) -> LiveLab:
    return start_lab(boards=list(INVENTORY), inventory=INVENTORY, api_keys=KEYS, rate_limit=0.0)


def test_reserve_without_a_board_takes_a_free_one_that_fits(pool_lab: LiveLab) -> None:
    """``reserve(None, design, tags=["dsp"])`` gets a dsp board; its session works as a
    named board's does and is given back at the end of the block."""
    with client(pool_lab, api_key=ALICE) as lab:
        with lab.reserve(None, DESIGN, filename="d.py", tags=["dsp"]) as board:
            assert board.fpga_id in (0, 1)
            board.write(USER, [5, 6])
            assert board.read(USER, 2) == [5, 6]
            assert board_state(pool_lab, board.fpga_id)["session"]["owner"] == "alice"
            taken = board.fpga_id
        assert board_state(pool_lab, taken)["state"] in ("resetting", "idle")
        with lab.reserve(None, DESIGN, filename="d.py", platform="ulx3s") as board:
            assert board.fpga_id == 3


def test_a_pool_reservation_waits_its_turn_and_gives_up_cleanly(pool_lab: LiveLab) -> None:
    """With the only ulx3s board held, a reservation for one waits (its job queued, a
    position and no board) and gets the board as soon as it is given back; one that
    stops waiting (its build_timeout) raises NoIdleBoard and its job is cancelled: it
    never runs."""
    got: list[int] = []
    with client(pool_lab, api_key=ALICE) as alice, client(pool_lab, api_key=BOB) as bob:
        held = alice.reserve(None, DESIGN, filename="d.py", platform="ulx3s")
        assert held.fpga_id == 3
        with pytest.raises(fc.NoIdleBoard, match="found no board within 1 s"):
            bob.reserve(None, DESIGN, filename="d.py", platform="ulx3s", build_timeout=1)
        jobs = [j for j in _jobs(pool_lab) if j["owner"] == "bob"]
        assert [j["status"] for j in jobs] == ["cancelled"] and jobs[0]["fpga_id"] is None

        def wait_for_it() -> None:
            with bob.reserve(None, DESIGN, filename="d.py", platform="ulx3s") as board:
                got.append(board.fpga_id)
                board.write(USER, [1])

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        deadline = time.monotonic() + 10
        while not [j for j in _jobs(pool_lab) if j["status"] == "queued"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        queued = next(j for j in _jobs(pool_lab) if j["status"] == "queued")
        standing = bob.pool_job(queued["job_id"])
        assert (standing.placed, standing.queue_position) == (False, 0)
        held.release()
        waiter.join(30)
        assert not waiter.is_alive() and got == [3]


def test_submit_to_pool_and_the_pool_jobs_calls(pool_lab: LiveLab) -> None:
    """``submit_to_pool`` answers where the job stands; ``pool_job`` follows it (``wait``
    held until placed); ``cancel_pool_job`` takes a waiting one out; a pool no board can
    ever meet is NoMatchingBoard, the admins' band PriorityReserved."""
    with client(pool_lab, api_key=ALICE) as lab:
        first = lab.submit_to_pool(DESIGN, filename="d.py", tags=["slow"])
        assert first.placed and first.fpga_id == 2 and first.queue_position == 0
        second = lab.submit_to_pool(DESIGN, filename="d.py", tags=["slow"], priority=60)
        assert not second.placed and second.queue_position == 0
        assert lab.pool_job(second.job_id).tags == ("slow",)
        lab.cancel_pool_job(second.job_id)
        gone = lab.pool_job(second.job_id)
        assert gone.status is fc.JobStatus.CANCELLED and gone.fpga_id is None
        with pytest.raises(fc.NoMatchingBoard, match="no board has the tag gpu"):
            lab.submit_to_pool(DESIGN, filename="d.py", tags=["gpu"])
        with pytest.raises(fc.PriorityReserved):
            lab.submit_to_pool(DESIGN, filename="d.py", priority=95)
        assert lab.pool_job(first.job_id, wait=5).status is fc.JobStatus.COMPLETE


def test_the_async_client_reserves_from_a_pool(pool_lab: LiveLab) -> None:
    async def main() -> list[int]:
        async with (
            AsyncClient(pool_lab.url, api_key=ALICE) as lab,
            lab.reserve(None, DESIGN, filename="d.py", tags=["dsp"]) as board,
        ):
            await board.write(USER, [9])
            return await board.read(USER)

    assert asyncio.run(main()) == [9]


def test_a_lab_without_pools_still_reserves_an_idle_board() -> None:
    """A test double of a lab older than pools (``POST /submit`` is 404 not_found):
    ``reserve(None, ...)`` looks for an idle board itself, as before; asked for a
    platform, it says the lab has no pools."""
    asked: list[str] = []
    board = {"fpga_id": 4, "state": "idle", "health": "good", "worker": "w1"}

    def lab(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.url.path == "/submit":
            return httpx.Response(404, json={"detail": {"error": "not_found", "message": "no"}})
        if request.url.path == "/fpga":
            return httpx.Response(200, json=[board])
        return httpx.Response(409, json={"detail": {"error": "fpga_not_idle", "message": "x"}})

    with Client("http://lab", transport=httpx.MockTransport(lab)) as c:
        with pytest.raises(fc.RouteNotFound) as refused:
            c.reserve(None, DESIGN, filename="d.py", platform="sim")
        assert "this lab has no pools" in "".join(refused.value.__notes__)
        with pytest.raises(fc.NoIdleBoard):
            c.reserve(None, DESIGN, filename="d.py")
    assert asked[-3:] == ["POST /submit", "GET /fpga", "POST /fpga/4/submit"]


def _jobs(lab: LiveLab) -> list[dict[str, object]]:
    """Every job of the lab, as an admin reads them (the audit trail's submits)."""
    with httpx.Client(base_url=lab.url, trust_env=False, headers=lab._admin()) as c:
        audit = c.get("/audit", params={"limit": 1000}).json()
        ids = {e["job_id"] for e in audit if e.get("job_id")}
        return [c.get(f"/jobs/{job_id}").json() for job_id in sorted(ids)]


def test_the_cli_submits_to_a_pool(pool_lab: LiveLab, tmp_path: Path) -> None:
    """``fpgalab submit FILE --tags dsp --wait`` (no --board) is placed and built, and says
    on which board; ``logs JOB`` and ``cancel JOB`` find the job's board themselves; one
    that waits past --timeout exits 1 and is left waiting, then cancelled by id; --board
    with --tags is a usage error."""
    from tests.client.test_cli import fpgalab

    design = tmp_path / "d.py"
    design.write_bytes(DESIGN)
    env = {"FPGALAB_API_KEY": ALICE}
    done = fpgalab(pool_lab, "submit", str(design), "--tags", "dsp", "--wait", **env)
    assert done.returncode == 0, done.stderr
    assert "placed on FPGA" in done.stdout and "is reserved for you until" in done.stdout
    job_id = done.stdout.split()[1]
    shown = fpgalab(pool_lab, "logs", job_id, **env)
    assert shown.returncode == 0 and "programmed" in shown.stdout, shown.stderr
    held = fpgalab(pool_lab, "submit", str(design), "--platform", "ulx3s", "--wait", **env)
    assert held.returncode == 0, held.stderr
    late = fpgalab(pool_lab, "submit", str(design), "--platform", "ulx3s", "--wait",
                   "--timeout", "1", **env)  # fmt: skip
    assert late.returncode == 1, late.stderr
    assert "waiting for a board: 0 jobs ahead" in late.stderr
    assert "no board took the job" in late.stderr
    waiting = late.stdout.split()[1]
    gone = fpgalab(pool_lab, "cancel", waiting, **env)
    assert gone.returncode == 0 and f"cancelled the job {waiting}" in gone.stdout
    with client(pool_lab, api_key=ALICE) as lab:
        assert lab.pool_job(waiting).status is fc.JobStatus.CANCELLED
    both = fpgalab(pool_lab, "submit", str(design), "--board", "1", "--tags", "dsp", **env)
    assert both.returncode == 2 and "for a submit without --board" in both.stderr
