"""The board state machine: the table in ``service/states.py``, the table in
``docs/state-machine.md``, and every edge and every refusal through the API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fpgalab.service.lua import library, lua_literal, source
from fpgalab.service.settings import Settings
from fpgalab.service.states import (
    TRANSITIONS,
    BoardState,
    Event,
    next_state,
    transitions_json,
)
from fpgalab.service.store import Store
from fpgalab.service.worker import Worker
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    REPO,
    assert_error,
    board,
    job,
    reserve,
    submit,
    wait_for,
    wait_job,
    wait_set,
    wait_state,
)

DOC = REPO / "docs" / "state-machine.md"


@pytest.fixture(autouse=True)
async def unblock_at_end(backend: FakeBackend, start_worker: WorkerFactory) -> AsyncIterator[None]:
    """Open every gate before the workers stop, so none waits out its stop grace."""
    yield
    backend.close()


async def no_workers(client: httpx.AsyncClient) -> bool:
    r = await client.get("/fpga")
    return all(b["worker"] is None for b in r.json())


@pytest.fixture
async def paused(client: httpx.AsyncClient, start_worker: WorkerFactory) -> httpx.AsyncClient:
    """The API with all ten boards checked healthy once, and no worker running now."""
    worker = await start_worker()
    worker.stop()
    await wait_for(lambda: no_workers(client))
    return client


async def gated_build(
    client: httpx.AsyncClient, backend: FakeBackend, fpga_id: int, text: str = "GATE\n"
) -> str:
    """Submit a design that stops at the gate; returns its job id once it is there."""
    backend.gate.clear()
    backend.gate_reached.clear()
    r = await submit(client, fpga_id, text)
    assert r.status_code == 202, r.text
    await wait_set(backend.gate_reached)
    return str(r.json()["job_id"])


async def post_run(client: httpx.AsyncClient, fpga_id: int, body: dict[str, Any]) -> str:
    r = await client.post(f"/fpga/{fpga_id}/run", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def post_reset(client: httpx.AsyncClient, fpga_id: int, how: str = "reset") -> str:
    path = f"/fpga/{fpga_id}/reset" if how == "reset" else f"/fpga/{fpga_id}/session/release"
    r = await client.post(path)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


# -- the table itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "event"), list(itertools.product(BoardState, Event)), ids=lambda v: str(v)
)
def test_next_state_follows_the_table(state: BoardState, event: Event) -> None:
    """An allowed (state, event) pair gives the table's target; every other pair gives None."""
    expected = {
        (BoardState.IDLE, Event.SUBMIT): BoardState.QUEUED,
        (BoardState.QUEUED, Event.CANCEL_BUILD): BoardState.IDLE,
        (BoardState.QUEUED, Event.CHECK_FAIL): BoardState.IDLE,
        (BoardState.QUEUED, Event.BUILD_START): BoardState.PROGRAMMING,
        (BoardState.PROGRAMMING, Event.BUILD_OK): BoardState.RESERVED,
        (BoardState.PROGRAMMING, Event.BUILD_FAIL): BoardState.ERROR,
        (BoardState.PROGRAMMING, Event.WORKER_LOST): BoardState.ERROR,
        (BoardState.RESERVED, Event.RESET): BoardState.RESETTING,
        (BoardState.RESERVED, Event.FAULT): BoardState.ERROR,
        (BoardState.RESERVED, Event.WORKER_LOST): BoardState.ERROR,
        (BoardState.ERROR, Event.RESET): BoardState.RESETTING,
        (BoardState.RESETTING, Event.RESET_OK): BoardState.IDLE,
        (BoardState.RESETTING, Event.RESET_FAIL): BoardState.ERROR,
        (BoardState.RESETTING, Event.WORKER_LOST): BoardState.ERROR,
    }
    assert next_state(state, event) == expected.get((state, event))


def test_every_state_is_reachable_and_left() -> None:
    """Each board state is the target of some edge and the source of some edge."""
    sources = {s for s, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    assert sources == set(BoardState)
    assert targets == set(BoardState)


def test_transitions_json_round_trips() -> None:
    """The JSON form the Lua scripts read decodes back to exactly TRANSITIONS."""
    table = json.loads(transitions_json())
    decoded = {
        (BoardState(state), Event(event)): BoardState(target)
        for state, row in table.items()
        for event, target in row.items()
    }
    assert decoded == TRANSITIONS


def test_lua_prelude_carries_the_table() -> None:
    """Every state-changing script is loaded with the current table substituted in, as a
    Lua table: alone (``EVAL``) and in the library (``FUNCTION LOAD``)."""
    table = f"local TRANSITIONS = {lua_literal(json.loads(transitions_json()))}\n"
    for name in ("submit", "cancel", "take", "finish", "lost", "reset"):
        text = source(name)
        assert "@TRANSITIONS@" not in text
        assert table in text
    assert table in library()[1] and "@" not in library()[1]


def _markdown_table(section: str) -> list[list[str]]:
    """The rows (header and separator dropped) of the first table under ``## section``."""
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(section)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {section}' section in {DOC}"
    rows: list[list[str]] = []
    started = False
    for line in match.group(1).splitlines():
        if line.startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break
    assert len(rows) >= 2 and set("".join(rows[1])) <= set("-: "), rows[:2]
    return rows[2:]


def test_documented_transitions_equal_the_code() -> None:
    """The '## Transitions' table in docs/state-machine.md is exactly TRANSITIONS."""
    rows = _markdown_table("Transitions")
    documented = {(BoardState(r[0]), Event(r[1])): BoardState(r[2]) for r in rows}
    assert len(documented) == len(rows), "a (from, event) pair is listed twice"
    assert documented == TRANSITIONS
    assert all(len(r) == 4 and r[3] for r in rows), "every edge says what causes it"


def test_documented_states_equal_the_code() -> None:
    """The '## States' table in docs/state-machine.md lists exactly the board states."""
    rows = _markdown_table("States")
    assert [r[0].strip("`") for r in rows] == [s.value for s in BoardState]


# -- every edge through the API --------------------------------------------------------


async def test_submit_goes_idle_queued_programming_reserved(
    paused: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A submit queues the board; a worker takes it to programming, then reserved."""
    assert (await board(paused, 2))["state"] == "idle"
    backend.gate.clear()
    r = await submit(paused, 2, "GATE\n")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    b = await board(paused, 2)
    assert b["state"] == "queued" and b["current_job_id"] == job_id
    assert b["session"]["session_id"] == r.json()["session_id"]
    assert (await job(paused, 2, job_id))["status"] == "queued"

    await start_worker([2])
    await wait_set(backend.gate_reached)
    b = await board(paused, 2)
    assert b["state"] == "programming" and b["current_job_id"] == job_id
    assert (await job(paused, 2, job_id))["status"] == "running"

    backend.release_gate()
    assert (await wait_job(paused, 2, job_id))["status"] == "complete"
    b = await board(paused, 2)
    assert b["state"] == "reserved" and b["current_job_id"] is None
    assert b["session"]["session_id"] == r.json()["session_id"]


async def test_cancelling_the_queued_build_goes_queued_to_idle(paused: httpx.AsyncClient) -> None:
    """Cancelling a build no worker has taken frees the board and closes its session."""
    r = await submit(paused, 4)
    job_id = r.json()["job_id"]
    assert (await board(paused, 4))["state"] == "queued"
    d = await paused.delete(f"/fpga/4/jobs/{job_id}")
    assert d.status_code == 204, d.text
    b = await board(paused, 4)
    assert b["state"] == "idle" and b["session"] is None and b["current_job_id"] is None
    assert (await job(paused, 4, job_id))["status"] == "cancelled"
    assert_error(await paused.get("/fpga/4/session"), 404, "no_active_session")
    # the board takes a new submit at once
    assert (await submit(paused, 4)).status_code == 202


async def test_failed_build_goes_programming_to_error(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A design that fails to build takes the board from programming to error, health good."""
    job_id = await gated_build(lab, backend, 3, "GATE\nFAIL_BUILD\n")
    assert (await board(lab, 3))["state"] == "programming"
    backend.release_gate()
    done = await wait_job(lab, 3, job_id)
    assert done["status"] == "failed" and "SyntaxError" in done["error"]
    b = await board(lab, 3)
    assert b["state"] == "error" and b["health"] == "good" and b["current_job_id"] is None


@pytest.mark.parametrize(("marker", "health"), [("INFRA_FAIL", "bad"), ("PROGRAM_FAIL", "unknown")])
async def test_infrastructure_build_failure_goes_to_error_and_marks_health(
    lab: httpx.AsyncClient, marker: str, health: str
) -> None:
    """A build or program failure that is the lab's fault: board in error, health tainted."""
    r = await submit(lab, 5, f"{marker}\n")
    done = await wait_job(lab, 5, r.json()["job_id"])
    assert done["status"] == "failed" and done["error"]
    b = await board(lab, 5)
    assert b["state"] == "error" and b["health"] == health and b["health_reason"]


@pytest.mark.parametrize("how", ["reset", "release"])
async def test_reset_goes_reserved_resetting_idle(
    lab: httpx.AsyncClient, backend: FakeBackend, how: str
) -> None:
    """Reset or release takes a reserved board through resetting back to idle."""
    await reserve(lab, 6)
    backend.hold.add("reset")
    job_id = await post_reset(lab, 6, how)
    b = await board(lab, 6)
    assert b["state"] == "resetting" and b["session"] is None and b["current_job_id"] == job_id
    await wait_set(backend.held)
    assert (await board(lab, 6))["state"] == "resetting"
    assert (await job(lab, 6, job_id))["status"] == "running"
    backend.resume.set()
    assert (await wait_job(lab, 6, job_id))["status"] == "complete"
    b = await board(lab, 6)
    assert b["state"] == "idle" and b["health"] == "good" and b["current_job_id"] is None


async def test_reset_goes_error_resetting_idle(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A board in error (failed build) goes through resetting back to idle."""
    r = await submit(lab, 7, "FAIL_BUILD\n")
    await wait_job(lab, 7, r.json()["job_id"])
    assert (await board(lab, 7))["state"] == "error"
    backend.hold.add("reset")
    job_id = await post_reset(lab, 7)
    assert (await board(lab, 7))["state"] == "resetting"
    await wait_set(backend.held)
    assert (await board(lab, 7))["state"] == "resetting"
    backend.resume.set()
    assert (await wait_job(lab, 7, job_id))["status"] == "complete"
    assert (await board(lab, 7))["state"] == "idle"


async def test_board_fault_goes_reserved_to_error(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A run that finds the board crashed fails and puts the board in error, health unknown."""
    await reserve(lab, 8)
    backend.crashed.add(8)
    job_id = await post_run(lab, 8, {"op": 2, "address": 0})
    done = await wait_job(lab, 8, job_id)
    assert done["status"] == "failed" and "stopped answering" in done["error"]
    b = await board(lab, 8)
    assert b["state"] == "error" and b["health"] == "unknown"
    # a run queued after the fault fails at once, naming the state
    later = await lab.post("/fpga/8/run", json={"op": 2, "address": 0})
    assert_error(later, 409, "fpga_not_reserved")
    reset = await post_reset(lab, 8)
    await wait_job(lab, 8, reset)
    b = await board(lab, 8)
    assert b["state"] == "idle" and b["health"] == "good"


async def test_failed_reset_goes_resetting_to_error(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A reset that fails leaves the board in error with health bad; a good reset recovers it."""
    await reserve(lab, 9)
    backend.fail_reset.add(9)
    job_id = await post_reset(lab, 9)
    done = await wait_job(lab, 9, job_id)
    assert done["status"] == "failed" and "base SoC" in done["error"]
    b = await board(lab, 9)
    assert b["state"] == "error" and b["health"] == "bad"
    assert_error(await submit(lab, 9), 409, "fpga_not_idle")
    backend.fail_reset.discard(9)
    again = await post_reset(lab, 9)
    assert (await wait_job(lab, 9, again))["status"] == "complete"
    b = await board(lab, 9)
    assert b["state"] == "idle" and b["health"] == "good"


@contextlib.asynccontextmanager
async def crashable_worker(
    settings: Settings, backend: FakeBackend, boards: list[int]
) -> AsyncIterator[tuple[Worker, asyncio.Task[None]]]:
    """An in-process worker the test can kill mid-job by cancelling its task."""
    store = Store.from_url(settings.redis_url or "", settings)
    worker = Worker(store, backend, boards)
    task = asyncio.create_task(worker.run())

    async def serving() -> bool:
        if task.done():
            task.result()
        rows = await store.boards(boards)
        return all(w == worker.id and b.get("health") for _, b, w in rows)

    try:
        await wait_for(serving)
        yield worker, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def kill(task: asyncio.Task[None]) -> None:
    """Stop a worker dead: no job it holds is finished (its heartbeat goes away)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("phase", ["programming", "reserved", "resetting"])
async def test_worker_lost_mid_job_goes_to_error(
    client: httpx.AsyncClient,
    start_worker: WorkerFactory,
    settings: Settings,
    backend: FakeBackend,
    phase: str,
) -> None:
    """A worker dying mid-job is seen by another worker: the job fails, the board goes to error."""
    await start_worker([0])  # the watcher: it serves another board only
    async with crashable_worker(settings, backend, [1]) as (doomed, task):
        if phase == "programming":
            job_id = await gated_build(client, backend, 1)
        else:
            await reserve(client, 1)
            if phase == "reserved":
                backend.hold.add("transact")
                job_id = await post_run(client, 1, {"op": 1, "address": 0, "data": [1]})
            else:
                backend.hold.add("reset")
                job_id = await post_reset(client, 1)
            await wait_set(backend.held)
        record = await job(client, 1, job_id)
        assert record["status"] == "running"
        assert (await board(client, 1))["state"] == phase

        await kill(task)
        done = await wait_job(client, 1, job_id)
        assert done["status"] == "failed"
        assert "lost" in done["error"] and doomed.id in done["error"]
        b = await board(client, 1)
        assert b["state"] == "error" and b["health"] == "unknown"
        assert b["current_job_id"] is None and b["worker"] is None

    # the orphaned backend call may finish now; it changes nothing
    backend.hold.clear()
    backend.resume.set()
    backend.release_gate()
    await start_worker([1])
    assert (await job(client, 1, job_id))["status"] == "failed"
    reset = await post_reset(client, 1)
    assert (await wait_job(client, 1, reset))["status"] == "complete"
    b = await board(client, 1)
    assert b["state"] == "idle" and b["health"] == "good"


# -- every refused pair through the API --------------------------------------------------


async def boards_in_every_state(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> dict[str, tuple[int, str | None]]:
    """Boards 0-5 put in idle, queued, programming, reserved, resetting and error:
    state -> (board, its current or last job). Board 1 has no worker."""
    await start_worker([2, 3, 4, 5])
    jobs: dict[str, tuple[int, str | None]] = {"idle": (0, None)}
    r = await submit(client, 1)
    assert r.status_code == 202, r.text
    jobs["queued"] = (1, r.json()["job_id"])
    jobs["programming"] = (2, await gated_build(client, backend, 2))
    jobs["reserved"] = (3, (await reserve(client, 3))["job_id"])
    await reserve(client, 4)
    backend.hold.add("reset")
    jobs["resetting"] = (4, await post_reset(client, 4))
    await wait_set(backend.held)
    r = await submit(client, 5, "FAIL_BUILD\n")
    await wait_job(client, 5, r.json()["job_id"])
    jobs["error"] = (5, r.json()["job_id"])
    for state, (fpga_id, _) in jobs.items():
        assert (await board(client, fpga_id))["state"] == state
    return jobs


async def assert_unchanged(client: httpx.AsyncClient, before: dict[int, dict[str, Any]]) -> None:
    for fpga_id, b in before.items():
        now = await board(client, fpga_id)
        assert (now["state"], now["current_job_id"], now["session"]) == (
            b["state"], b["current_job_id"], b["session"],
        ), fpga_id  # fmt: skip


async def snapshot(client: httpx.AsyncClient) -> dict[int, dict[str, Any]]:
    return {i: await board(client, i) for i in range(6)}


async def test_submit_is_refused_unless_idle(
    paused: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """Submit to a queued, programming, reserved, resetting or error board is 409 fpga_not_idle."""
    boards = await boards_in_every_state(paused, start_worker, backend)
    before = await snapshot(paused)
    for state in ("queued", "programming", "reserved", "resetting", "error"):
        fpga_id, _ = boards[state]
        err = assert_error(await submit(paused, fpga_id), 409, "fpga_not_idle")
        assert state in err["message"], err
    await assert_unchanged(paused, before)


async def test_run_is_refused_unless_reserved(
    paused: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """Run on an idle, queued, programming, resetting or error board is 409 fpga_not_reserved."""
    boards = await boards_in_every_state(paused, start_worker, backend)
    before = await snapshot(paused)
    for state in ("idle", "queued", "programming", "resetting", "error"):
        fpga_id, _ = boards[state]
        r = await paused.post(f"/fpga/{fpga_id}/run", json={"op": 2, "address": 0})
        err = assert_error(r, 409, "fpga_not_reserved")
        assert state in err["message"], err
    await assert_unchanged(paused, before)


async def test_reset_is_refused_unless_reserved_or_error(
    paused: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """Reset of an idle, queued, programming or resetting board is 409 fpga_not_resettable."""
    boards = await boards_in_every_state(paused, start_worker, backend)
    before = await snapshot(paused)
    for state in ("idle", "queued", "programming", "resetting"):
        fpga_id, _ = boards[state]
        err = assert_error(await paused.post(f"/fpga/{fpga_id}/reset"), 409, "fpga_not_resettable")
        assert state in err["message"], err
    # release of a board whose session has not settled is refused the same way;
    # with no session at all it is 404 no_active_session
    for state in ("queued", "programming"):
        fpga_id, _ = boards[state]
        r = await paused.post(f"/fpga/{fpga_id}/session/release")
        assert_error(r, 409, "fpga_not_resettable")
    for state in ("idle", "resetting"):
        fpga_id, _ = boards[state]
        r = await paused.post(f"/fpga/{fpga_id}/session/release")
        assert_error(r, 404, "no_active_session")
    await assert_unchanged(paused, before)


async def test_cancel_is_refused_once_a_worker_has_the_job(
    paused: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """Cancelling a running build, a running reset or a finished job is 409 job_not_cancellable."""
    boards = await boards_in_every_state(paused, start_worker, backend)
    before = await snapshot(paused)
    for state in ("programming", "resetting", "reserved", "error"):
        fpga_id, job_id = boards[state]
        status = (await job(paused, fpga_id, job_id or ""))["status"]
        r = await paused.delete(f"/fpga/{fpga_id}/jobs/{job_id}")
        err = assert_error(r, 409, "job_not_cancellable")
        assert status in err["message"], err
        assert (await job(paused, fpga_id, job_id or ""))["status"] == status
    await assert_unchanged(paused, before)


async def test_cancel_of_a_queued_reset_is_refused(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A reset job still in the queue cannot be cancelled: 409 job_not_cancellable."""
    await reserve(lab, 3)
    backend.hold.add("transact")
    run_id = await post_run(lab, 3, {"op": 1, "address": 0, "data": [5]})
    await wait_set(backend.held)
    queued_run = await post_run(lab, 3, {"op": 2, "address": 0})
    reset_id = await post_reset(lab, 3)
    assert (await job(lab, 3, reset_id))["status"] == "queued"
    err = assert_error(await lab.delete(f"/fpga/3/jobs/{reset_id}"), 409, "job_not_cancellable")
    assert "reset" in err["message"]
    assert (await job(lab, 3, reset_id))["status"] == "queued"
    # the reset cancelled the run queued behind the held one
    cancelled = await job(lab, 3, queued_run)
    assert cancelled["status"] == "cancelled" and "reset" in cancelled["error"]

    backend.resume.set()
    assert (await wait_job(lab, 3, run_id))["status"] == "complete"
    assert (await wait_job(lab, 3, reset_id))["status"] == "complete"
    await wait_state(lab, 3, "idle")
