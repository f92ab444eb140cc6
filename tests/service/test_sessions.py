"""Sessions: their shape, expiry (on its own, and while a build is still running),
renewal up to the hard maximum lifetime, release, and the runs a reset cancels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    assert_error,
    board,
    job,
    jobs_in_redis,
    reserve,
    serve,
    submit,
    wait_for,
    wait_job,
    wait_set,
    wait_state,
)

TTL = 60
MAX_LIFETIME = 120


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A one-minute session that may live two minutes: for the app and the workers."""
    return settings.model_copy(update={"session_ttl": TTL, "session_max_lifetime": MAX_LIFETIME})


@pytest.fixture
def short(settings: Settings) -> Settings:
    """Sessions that expire after one second."""
    return settings.model_copy(update={"session_ttl": 1})


@pytest.fixture
async def expiring(
    short: Settings, start_worker: WorkerFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with one-second sessions, and a worker (same settings) on every board."""
    async with serve(short) as c:
        await start_worker(worker_settings=short)
        yield c


def when(value: str) -> datetime:
    """An API timestamp, which must be ISO 8601 with a UTC offset."""
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


async def reset_jobs(store: Store, fpga_id: int) -> list[dict[str, str]]:
    """The reset job records of a board, straight from Redis."""
    return [r for r in await jobs_in_redis(store, fpga_id) if r.get("type") == "reset"]


async def held_run_and_queue(
    c: httpx.AsyncClient, fake: FakeBackend, fpga_id: int, queued: int = 2
) -> tuple[str, list[str]]:
    """One run held in the backend, and ``queued`` runs waiting behind it."""
    fake.hold.add("transact")
    fake.hold_boards.add(fpga_id)
    r = await c.post(f"/fpga/{fpga_id}/run", json={"op": 1, "address": 0, "data": [1]})
    assert r.status_code == 202, r.text
    running = r.json()["job_id"]
    await wait_set(fake.held)
    waiting = []
    for i in range(queued):
        r = await c.post(f"/fpga/{fpga_id}/run", json={"op": 2, "address": 4 * i})
        assert r.status_code == 202, r.text
        waiting.append(r.json()["job_id"])
    for job_id in waiting:
        assert (await job(c, fpga_id, job_id))["status"] == "queued"
    return running, waiting


async def test_session_shape(lab: httpx.AsyncClient) -> None:
    """GET session names the session, its owner and three ISO 8601 UTC times: created, expires
    (created + TTL) and the hard maximum (created + max lifetime)."""
    accepted = await reserve(lab, 3)
    r = await lab.get("/fpga/3/session")
    assert r.status_code == 200
    s = r.json()
    assert set(s) == {
        "fpga_id", "session_id", "owner", "created_at", "expires_at", "max_expires_at"
    }  # fmt: skip
    assert s["fpga_id"] == 3
    assert s["session_id"] == accepted["session_id"] and s["owner"] == "anonymous"
    created, expires, limit = (
        when(s["created_at"]),
        when(s["expires_at"]),
        when(s["max_expires_at"]),
    )
    assert abs((expires - created).total_seconds() - TTL) < 0.01
    assert abs((limit - created).total_seconds() - MAX_LIFETIME) < 0.01
    assert when(accepted["expires_at"]) == expires
    assert abs((datetime.now(UTC) - created).total_seconds()) < 30  # a real clock, in UTC
    assert (await board(lab, 3))["session"] == {k: v for k, v in s.items() if k != "fpga_id"}


async def test_an_expired_session_resets_the_board_on_its_own(
    expiring: httpx.AsyncClient, store: Store, backend: FakeBackend
) -> None:
    """When a session expires, a reset is queued without any request and the board ends idle."""
    accepted = await reserve(expiring, 4)

    async def reset_done() -> bool:
        b = await board(expiring, 4)
        return b["state"] == "idle" and b["session"] is None

    await wait_for(reset_done)
    assert_error(await expiring.get("/fpga/4/session"), 404, "no_active_session")
    [reset] = await reset_jobs(store, 4)
    assert reset["reason"] == "expire" and reset["status"] == "complete"
    assert reset["session_id"] == accepted["session_id"] and reset["owner"] == "anonymous"
    assert ("reset", 4) in backend.calls
    # the board is free for the next user
    assert (await submit(expiring, 4)).status_code == 202


async def test_expiry_during_the_build_waits_for_it_then_resets(
    expiring: httpx.AsyncClient, store: Store, backend: FakeBackend, short: Settings
) -> None:
    """A session that expires while its build runs keeps the board until the build settles,
    then the board is reset."""
    r = await submit(expiring, 5, "GATE\n")
    assert r.status_code == 202
    build_id = r.json()["job_id"]
    expires = when(r.json()["expires_at"])
    await wait_set(backend.gate_reached)

    async def expired() -> bool:
        return datetime.now(UTC) > expires

    await wait_for(expired)
    await asyncio.sleep(5 * short.housekeeping_interval)  # housekeeping has seen it expire
    b = await board(expiring, 5)
    assert b["state"] == "programming", b
    assert b["session"] is not None and b["session"]["session_id"] == r.json()["session_id"]
    assert await reset_jobs(store, 5) == []
    assert (await job(expiring, 5, build_id))["status"] == "running"

    backend.release_gate()
    assert (await wait_job(expiring, 5, build_id))["status"] == "complete"

    async def reset_done() -> bool:
        b = await board(expiring, 5)
        return b["state"] == "idle" and b["session"] is None

    await wait_for(reset_done)
    [reset] = await reset_jobs(store, 5)
    assert reset["reason"] == "expire" and reset["status"] == "complete"
    calls = [c for c in backend.calls if c[0] in ("program", "reset")]
    assert calls == [("program", 5), ("reset", 5)]


async def test_renew_extends_the_session_by_the_ttl(lab: httpx.AsyncClient) -> None:
    """A renew without a body moves expires_at to about now + TTL, never earlier than before."""
    await reserve(lab, 6)
    before = when((await lab.get("/fpga/6/session")).json()["expires_at"])
    await asyncio.sleep(0.05)  # so that now + TTL is measurably later
    started = datetime.now(UTC)
    r = await lab.post("/fpga/6/session/renew")
    assert r.status_code == 200
    after = when(r.json()["expires_at"])
    assert after > before
    assert (
        started + timedelta(seconds=TTL - 1)
        <= after
        <= datetime.now(UTC) + timedelta(seconds=TTL + 1)
    )
    assert when((await lab.get("/fpga/6/session")).json()["expires_at"]) == after


async def test_renew_by_given_seconds(lab: httpx.AsyncClient) -> None:
    """A renew with {"seconds": N} moves expires_at to now + N; a shorter N never shortens it."""
    accepted = await reserve(lab, 7)
    started = datetime.now(UTC)
    r = await lab.post("/fpga/7/session/renew", json={"seconds": 90})
    assert r.status_code == 200
    s = r.json()
    assert s["session_id"] == accepted["session_id"]
    extended = when(s["expires_at"])
    assert started + timedelta(seconds=89) <= extended <= datetime.now(UTC) + timedelta(seconds=91)
    r = await lab.post("/fpga/7/session/renew", json={"seconds": 5})
    assert r.status_code == 200 and when(r.json()["expires_at"]) == extended
    for bad in ({"seconds": 0}, {"seconds": -5}, {"seconds": "soon"}, {"minutes": 5}):
        detail = assert_error(
            await lab.post("/fpga/7/session/renew", json=bad), 422, "validation_error"
        )
        assert "seconds" in detail["message"] or "minutes" in detail["message"], detail


async def test_renew_stops_at_the_maximum_lifetime(lab: httpx.AsyncClient) -> None:
    """A renew never passes max_expires_at; once there, renew is 409 session_renew_limit and the
    session carries on."""
    await reserve(lab, 8)
    r = await lab.post("/fpga/8/session/renew", json={"seconds": 24 * 3600})
    assert r.status_code == 200
    s = r.json()
    assert when(s["expires_at"]) == when(s["max_expires_at"])
    detail = assert_error(await lab.post("/fpga/8/session/renew"), 409, "session_renew_limit")
    assert "maximum" in detail["message"]
    assert_error(
        await lab.post("/fpga/8/session/renew", json={"seconds": 1}), 409, "session_renew_limit"
    )
    after = (await lab.get("/fpga/8/session")).json()
    assert after == s
    assert (await board(lab, 8))["state"] == "reserved"


async def test_renew_and_release_without_a_session_are_404(client: httpx.AsyncClient) -> None:
    """Renew and release of a board with no session are 404 no_active_session."""
    for action in ("renew", "release"):
        r = await client.post(f"/fpga/0/session/{action}")
        detail = assert_error(r, 404, "no_active_session")
        assert "FPGA 0" in detail["message"]
    assert_error(await client.get("/fpga/0/session"), 404, "no_active_session")


async def test_release_ends_the_session_at_once(lab: httpx.AsyncClient) -> None:
    """After release, GET session is 404 at once, renew and a second release are 404 too, and
    the board ends idle."""
    await reserve(lab, 9)
    r = await lab.post("/fpga/9/session/release")
    assert r.status_code == 202
    assert_error(await lab.get("/fpga/9/session"), 404, "no_active_session")
    assert (await board(lab, 9))["session"] is None
    assert_error(await lab.post("/fpga/9/session/renew"), 404, "no_active_session")
    assert_error(await lab.post("/fpga/9/session/release"), 404, "no_active_session")
    assert (await wait_job(lab, 9, r.json()["job_id"]))["status"] == "complete"
    await wait_state(lab, 9, "idle")
    assert_error(await lab.get("/fpga/9/session"), 404, "no_active_session")


@pytest.mark.parametrize("how", ["reset", "session/release"])
async def test_a_reset_cancels_the_queued_runs_and_says_why(
    lab: httpx.AsyncClient, backend: FakeBackend, how: str
) -> None:
    """Runs still queued when the board is reset or released are cancelled with an error naming
    the reset; the run in progress finishes first."""
    await reserve(lab, 1)
    running, waiting = await held_run_and_queue(lab, backend, 1)
    r = await lab.post(f"/fpga/1/{how}")
    assert r.status_code == 202, r.text
    for job_id in waiting:
        j = await job(lab, 1, job_id)
        assert j["status"] == "cancelled", j
        assert "FPGA 1 was reset" in j["error"]
        assert j["finished_at"] is not None
    assert (await job(lab, 1, running))["status"] == "running"
    backend.resume.set()
    assert (await wait_job(lab, 1, running))["status"] == "complete"
    assert (await wait_job(lab, 1, r.json()["job_id"]))["status"] == "complete"
    await wait_state(lab, 1, "idle")
    assert [c for c in backend.calls if c[0] == "transact"] == [("transact", 1)]


async def test_expiry_cancels_the_queued_runs_and_says_why(
    short: Settings, start_worker: WorkerFactory, backend: FakeBackend, store: Store
) -> None:
    """Runs still queued when the session expires are cancelled with an error saying it
    expired, and the board is reset once the run in progress ends."""
    # the board's own worker does housekeeping only at its start; the session's expiry
    # is seen by a second worker (every worker watches every board's sessions), so the
    # runs below are queued before anyone acts on it. Three seconds: a run sent after
    # expires_at is refused, and a loaded machine may take a second to queue them
    short = short.model_copy(update={"session_ttl": 3})
    lazy = short.model_copy(update={"housekeeping_interval": 3600})
    async with serve(short) as c:
        await start_worker(boards=[2], worker_settings=lazy)
        accepted = await reserve(c, 2)
        running, waiting = await held_run_and_queue(c, backend, 2)
        assert await reset_jobs(store, 2) == []
        await start_worker(boards=[9], worker_settings=short)
        for job_id in waiting:
            j = await wait_job(c, 2, job_id)
            assert j["status"] == "cancelled", j
            assert "session expired" in j["error"]
        assert_error(await c.get("/fpga/2/session"), 404, "no_active_session")
        backend.resume.set()
        assert (await wait_job(c, 2, running))["status"] == "complete"
        await wait_state(c, 2, "idle")
        [reset] = await reset_jobs(store, 2)
        assert reset["reason"] == "expire" and reset["session_id"] == accepted["session_id"]
        assert reset["status"] == "complete"


async def test_renew_and_run_just_after_expiry_are_refused_before_housekeeping(
    short: Settings, start_worker: WorkerFactory, store: Store
) -> None:
    """Right after expires_at, before any housekeeping pass has reset the board, a renew is
    404 no_active_session and a run 409 fpga_not_reserved: the expiry is checked (by Redis's
    clock) in the same step that would accept them, and the session is not extended."""
    lazy = short.model_copy(update={"housekeeping_interval": 3600})
    async with serve(lazy) as c:
        await start_worker(boards=[2], worker_settings=lazy)
        accepted = await reserve(c, 2)
        expires = when(accepted["expires_at"])

        async def past_expiry() -> bool:
            seconds, micros = await store.redis.time()
            return seconds + micros / 1e6 > expires.timestamp() + 0.01

        await wait_for(past_expiry, timeout=5, interval=0.005)
        renew = await c.post("/fpga/2/session/renew", json={"seconds": 600})
        assert "expired" in assert_error(renew, 404, "no_active_session")["message"]
        run = await c.post("/fpga/2/run", json={"op": 2, "address": 0})
        assert "expired" in assert_error(run, 409, "fpga_not_reserved")["message"]
        b = await board(c, 2)
        assert b["state"] == "reserved", b  # no housekeeping pass has run: the refusal is not its
        assert when(b["session"]["expires_at"]) == expires
        assert [j["type"] for j in await jobs_in_redis(store, 2)] == ["build_and_program"]
