"""Board health, kept apart from state: checks, maintenance, and what infrastructure
failures (and only they) do to it."""

from __future__ import annotations

import httpx
import pytest

from fpgalab.service.states import BOARD_IDS
from fpgalab.service.worker import Worker
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    assert_error,
    board,
    job,
    reserve,
    reset_to_idle,
    run_job,
    submit,
    wait_for,
    wait_job,
    wait_set,
)


async def refused(c: httpx.AsyncClient, fpga_id: int, *words: str) -> str:
    """A submit is 409 fpga_unavailable with a message holding ``words``; the message."""
    detail = assert_error(await submit(c, fpga_id), 409, "fpga_unavailable")
    for word in words:
        assert word in detail["message"], detail
    assert (await board(c, fpga_id))["state"] == "idle"
    return str(detail["message"])


async def test_boards_start_unknown_and_take_submits_that_wait_for_a_worker(
    client: httpx.AsyncClient, start_worker: WorkerFactory
) -> None:
    """With no worker yet every board is idle with health unknown, and none is ready; a
    submit is accepted all the same (202), waits in the queue, and runs once a worker has
    checked the board."""
    boards = (await client.get("/fpga")).json()
    assert [(b["state"], b["health"]) for b in boards] == [("idle", "unknown")] * len(BOARD_IDS)
    r = await submit(client, 0)
    assert r.status_code == 202, r.text
    assert (await client.get("/health")).json()["boards"] == {"ready": 0, "total": 10}
    assert (await job(client, 0, r.json()["job_id"]))["status"] == "queued"
    assert (await board(client, 0))["state"] == "queued"

    await start_worker(boards=[0], wait_healthy=False)
    assert (await wait_job(client, 0, r.json()["job_id"]))["status"] == "complete"
    b = await board(client, 0)
    assert (b["state"], b["health"]) == ("reserved", "good")


async def test_the_workers_start_up_check_makes_boards_good(
    client: httpx.AsyncClient, start_worker: WorkerFactory
) -> None:
    """A worker checks its boards at start: they become good and take submits."""
    await start_worker(boards=[1, 2])
    healths = {b["fpga_id"]: b["health"] for b in (await client.get("/fpga")).json()}
    assert healths[1] == healths[2] == "good"
    assert healths[3] == "unknown"  # not this worker's board: not checked
    assert (await board(client, 1))["health_reason"] is None
    assert (await submit(client, 1)).status_code == 202
    assert (await client.get("/health")).json()["boards"] == {"ready": 2, "total": 10}


async def test_a_board_failing_its_health_check_is_bad(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A board whose health check fails is bad, says why, and refuses submits; the others
    are good."""
    backend.unhealthy.add(4)
    await start_worker()
    b = await board(client, 4)
    assert b["health"] == "bad" and "does not answer" in b["health_reason"]
    await refused(client, 4, "health is bad", "does not answer")
    assert (await board(client, 5))["health"] == "good"
    assert (await submit(client, 5)).status_code == 202


async def test_maintenance_takes_a_board_out_and_online_brings_it_back(
    lab: httpx.AsyncClient,
) -> None:
    """Maintenance (with a reason) refuses submits, the reason in the message; online makes the
    board good again."""
    r = await lab.post("/fpga/2/maintenance", json={"reason": "replacing the JTAG cable"})
    assert r.status_code == 200
    summary = r.json()
    assert summary["fpga_id"] == 2 and summary["health"] == "maintenance"
    assert summary["health_reason"] == "replacing the JTAG cable"
    await refused(lab, 2, "maintenance", "replacing the JTAG cable")
    r = await lab.post("/fpga/2/online")
    assert r.status_code == 200 and r.json()["health"] == "good"
    assert (await reserve(lab, 2))["session_id"]


async def test_maintenance_without_a_reason_names_who(lab: httpx.AsyncClient) -> None:
    """Maintenance without a body gives a reason naming the admin; online of a board not in
    maintenance leaves its health alone."""
    r = await lab.post("/fpga/3/maintenance")
    assert r.status_code == 200 and "anonymous" in r.json()["health_reason"]
    await refused(lab, 3, "maintenance", "anonymous")
    await lab.post("/fpga/3/online")
    await lab.post("/fpga/4/online")
    assert (await board(lab, 4))["health"] == "good"


async def test_a_running_session_carries_on_through_maintenance(lab: httpx.AsyncClient) -> None:
    """A board put in maintenance mid-session keeps serving its owner's runs; after the reset
    it stays in maintenance (the reset's check does not end it) until online."""
    await reserve(lab, 5)
    await run_job(lab, 5, {"op": 1, "address": 0, "data": [11]})
    r = await lab.post("/fpga/5/maintenance", json={"reason": "firmware update"})
    assert r.json()["state"] == "reserved" and r.json()["session"] is not None
    assert (await run_job(lab, 5, {"op": 2, "address": 0}))["data"] == [11]
    assert (await lab.post("/fpga/5/session/renew")).status_code == 200
    after = await reset_to_idle(lab, 5)
    assert after["state"] == "idle" and after["health"] == "maintenance"
    assert after["health_reason"] == "firmware update"
    await refused(lab, 5, "firmware update")
    assert (await lab.post("/fpga/5/online")).json()["health"] == "good"
    assert (await submit(lab, 5)).status_code == 202


async def test_a_worker_check_never_ends_maintenance(
    client: httpx.AsyncClient,
    start_worker: WorkerFactory,
    backend: FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's health check (good or bad) of a board in maintenance leaves it in maintenance."""
    await client.post("/fpga/6/maintenance", json={"reason": "bench test"})
    await client.post("/fpga/7/maintenance", json={"reason": "bench test"})
    backend.unhealthy.add(7)
    worker: Worker = await start_worker(boards=[6, 7], wait_healthy=False)  # not running yet
    checks: list[tuple[int, str, str, str]] = []
    set_health = worker.store.set_health

    async def recorded(fpga_id: int, mode: str, health: str, reason: str, by: str = "") -> str:
        kept = await set_health(fpga_id, mode, health, reason, by)
        checks.append((fpga_id, mode, health, kept))
        return kept

    monkeypatch.setattr(worker.store, "set_health", recorded)

    async def both_checked() -> bool:
        return {c[0] for c in checks} == {6, 7}

    await wait_for(both_checked)
    assert sorted(checks) == [
        (6, "check", "good", "maintenance"),
        (7, "check", "bad", "maintenance"),
    ]
    for fpga_id in (6, 7):
        b = await board(client, fpga_id)
        assert (b["health"], b["health_reason"]) == ("maintenance", "bench test")
        await refused(client, fpga_id, "maintenance")


async def test_an_infrastructure_build_failure_makes_the_board_bad(lab: httpx.AsyncClient) -> None:
    """A build failing for the lab's own reason puts the board in error with health bad;
    a reset whose check passes makes it good again."""
    r = await submit(lab, 1, "INFRA_FAIL\n")
    done = await wait_job(lab, 1, r.json()["job_id"])
    assert done["status"] == "failed" and "toolchain not found" in done["error"]
    b = await board(lab, 1)
    assert (b["state"], b["health"]) == ("error", "bad")
    assert "toolchain not found" in b["health_reason"]
    after = await reset_to_idle(lab, 1)
    assert (after["state"], after["health"]) == ("idle", "good")
    assert after["health_reason"] is None


async def test_a_programming_failure_makes_the_health_unknown(lab: httpx.AsyncClient) -> None:
    """A board that does not come up after programming is in error with health unknown; a reset
    recovers it."""
    r = await submit(lab, 2, "PROGRAM_FAIL\n")
    done = await wait_job(lab, 2, r.json()["job_id"])
    assert done["status"] == "failed" and "did not come up" in done["error"]
    b = await board(lab, 2)
    assert (b["state"], b["health"]) == ("error", "unknown")
    assert "did not come up" in b["health_reason"]
    after = await reset_to_idle(lab, 2)
    assert (after["state"], after["health"]) == ("idle", "good")


async def test_a_crashed_board_fails_the_run_and_the_runs_behind_it(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A run on a board that stopped answering fails, the board goes to error with health
    unknown, runs queued behind it fail naming the state, and a reset recovers the board."""
    await reserve(lab, 3)
    backend.crashed.add(3)
    backend.hold.add("transact")
    backend.hold_boards.add(3)
    r = await lab.post("/fpga/3/run", json={"op": 2, "address": 0})
    first = r.json()["job_id"]
    await wait_set(backend.held)
    behind = []
    for address in (4, 8):
        r = await lab.post("/fpga/3/run", json={"op": 2, "address": address})
        assert r.status_code == 202
        behind.append(r.json()["job_id"])
    backend.resume.set()

    done = await wait_job(lab, 3, first)
    assert done["status"] == "failed" and "stopped answering" in done["error"]
    for job_id in behind:
        j = await wait_job(lab, 3, job_id)
        assert j["status"] == "failed", j
        assert "FPGA 3 is error" in j["error"]
    b = await board(lab, 3)
    assert (b["state"], b["health"]) == ("error", "unknown")
    assert "stopped answering" in b["health_reason"]
    assert b["session"] is not None  # the owner still holds it, to read logs and reset
    assert_error(
        await lab.post("/fpga/3/run", json={"op": 2, "address": 0}), 409, "fpga_not_reserved"
    )
    assert [c for c in backend.calls if c[0] == "transact"] == [("transact", 3)]

    after = await reset_to_idle(lab, 3)
    assert (after["state"], after["health"]) == ("idle", "good")
    assert (await reserve(lab, 3))["session_id"]


async def test_a_failing_reset_makes_the_board_bad(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A reset that fails leaves the board in error with health bad; a reset that works (and
    passes its check) makes it idle and good."""
    await reserve(lab, 4)
    backend.fail_reset.add(4)
    r = await lab.post("/fpga/4/reset")
    done = await wait_job(lab, 4, r.json()["job_id"])
    assert done["status"] == "failed" and "base SoC" in done["error"]
    b = await board(lab, 4)
    assert (b["state"], b["health"]) == ("error", "bad")
    assert "base SoC" in b["health_reason"]
    assert_error(await submit(lab, 4), 409, "fpga_not_idle")
    backend.fail_reset.discard(4)
    after = await reset_to_idle(lab, 4)
    assert (after["state"], after["health"]) == ("idle", "good")


async def test_a_reset_whose_check_fails_leaves_the_board_bad(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A reset that completes but whose health check fails leaves the board idle and bad, and it
    refuses submits."""
    await reserve(lab, 5)
    backend.unhealthy.add(5)
    after = await reset_to_idle(lab, 5)
    assert (after["state"], after["health"]) == ("idle", "bad")
    await refused(lab, 5, "health is bad", "does not answer")


async def test_a_failed_user_build_leaves_the_health_good(lab: httpx.AsyncClient) -> None:
    """A design that does not build is the user's fault: the board is in error but stays good."""
    r = await submit(lab, 6, "FAIL_BUILD\n")
    done = await wait_job(lab, 6, r.json()["job_id"])
    assert done["status"] == "failed" and "SyntaxError" in done["error"]
    b = await board(lab, 6)
    assert (b["state"], b["health"], b["health_reason"]) == ("error", "good", None)
    after = await reset_to_idle(lab, 6)
    assert (after["state"], after["health"]) == ("idle", "good")
    assert (await job(lab, 6, done["job_id"]))["status"] == "failed"


async def test_health_and_state_are_reported_apart(lab: httpx.AsyncClient) -> None:
    """Every board summary carries both a state and a health, and maintenance changes only the
    health."""
    await reserve(lab, 7)
    before = await board(lab, 7)
    await lab.post("/fpga/7/maintenance")
    after = await board(lab, 7)
    assert (before["state"], before["health"]) == ("reserved", "good")
    assert (after["state"], after["health"]) == ("reserved", "maintenance")
    assert after["session"] == before["session"]


# -- boards not checked yet, and how many are ready -------------------------------------


async def ready(client: httpx.AsyncClient) -> int:
    """``/health``'s count of ready boards (out of all ten)."""
    r = await client.get("/health")
    assert r.status_code == 200, r.text
    counts = r.json()["boards"]
    assert counts["total"] == len(BOARD_IDS)
    return int(counts["ready"])


async def test_a_submit_while_the_first_check_runs_waits_for_the_board(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A submit to a board whose worker is still bringing it up (its first check under way,
    health unknown) is accepted; the build waits until the check is done, then runs."""
    backend.hold.add("health")
    backend.hold_boards.add(2)
    await start_worker(boards=[2], wait_healthy=False)
    await wait_set(backend.held)
    assert (await board(client, 2))["health"] == "unknown"
    r = await submit(client, 2)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert await ready(client) == 0
    assert ("build", "design.py") not in backend.calls  # not before the board is up
    assert (await job(client, 2, job_id))["status"] == "queued"

    backend.resume.set()
    assert (await wait_job(client, 2, job_id))["status"] == "complete"
    b = await board(client, 2)
    assert (b["state"], b["health"]) == ("reserved", "good")
    assert await ready(client) == 1


async def test_a_board_found_bad_by_its_first_check_fails_the_build_it_took(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A build accepted before its board was checked, on a board the check finds bad, fails
    without starting (saying why); the board is idle again, bad, with no session, and refuses
    the next submit."""
    backend.unhealthy.add(3)
    backend.hold.add("health")
    await start_worker(boards=[3], wait_healthy=False)
    await wait_set(backend.held)
    r = await submit(client, 3)
    assert r.status_code == 202, r.text
    backend.resume.set()

    done = await wait_job(client, 3, r.json()["job_id"])
    assert done["status"] == "failed", done
    assert "FPGA 3 failed its health check before the build began" in done["error"]
    assert "does not answer" in done["error"]
    b = await board(client, 3)
    assert (b["state"], b["health"], b["session"]) == ("idle", "bad", None)
    assert b["current_job_id"] is None
    assert not [c for c in backend.calls if c[0] in ("build", "program")]
    await refused(client, 3, "health is bad")
    assert (await client.get("/fpga/3/session")).status_code == 404


async def test_health_counts_the_boards_that_are_up(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """/health's ``boards.ready`` counts boards held by a live worker that has checked them,
    healthy and not in error, in use or not; maintenance, error and a worker's end take a
    board out, and a new worker's boards count once it has checked them itself."""
    worker = await start_worker(boards=[4, 5, 6])
    assert await ready(client) == 3
    await reserve(client, 4)
    assert await ready(client) == 3  # in use is still up
    await client.post("/fpga/5/maintenance")
    r = await submit(client, 6, "FAIL_BUILD\n")
    await wait_job(client, 6, r.json()["job_id"])
    assert (await board(client, 6))["state"] == "error"
    assert await ready(client) == 1
    await client.post("/fpga/5/online")
    assert await ready(client) == 2

    worker.stop()

    async def none_ready() -> bool:
        return await ready(client) == 0

    await wait_for(none_ready)
    # a new worker: board 5 is still good in Redis, but not checked by it yet
    backend.hold.add("health")
    await start_worker(boards=[5], wait_healthy=False)
    await wait_set(backend.held)
    assert (await board(client, 5))["health"] == "good"
    assert (await board(client, 5))["worker"] is not None
    assert await ready(client) == 0
    backend.resume.set()

    async def one_ready() -> bool:
        return await ready(client) == 1

    await wait_for(one_ready)
