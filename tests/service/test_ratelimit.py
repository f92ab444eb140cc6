"""Per-caller rate limiting of mutating calls: a token bucket in Redis, shared by every
API replica; 429 rate_limited with Retry-After; admins and reads are not limited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from fpgalab.service.settings import Settings
from tests.conftest import WorkerFactory
from tests.helpers import assert_error, reserve, serve, wait_job

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
OPS = {"X-API-Key": "ops-key"}  # admin

BURST = 3
#: A call that changes nothing but is a mutating call: renew of a board without a session.
RENEW = "/fpga/5/session/renew"


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Keys for alice, bob and ops (admin); a bucket of 3 calls refilled at 1 per second."""
    return settings.model_copy(
        update={
            "api_keys": "alice=alice-key,bob=bob-key,ops=ops-key:admin",
            "rate_limit": 1.0,
            "rate_limit_burst": BURST,
        }
    )


@pytest.fixture
async def replica(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second API process's worth: another app on the same Redis."""
    async with serve(app_settings) as c:
        yield c


async def spend(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> list[int]:
    """The statuses of ``n`` mutating calls in a row."""
    return [(await client.post(RENEW, headers=headers)).status_code for _ in range(n)]


def retry_after(response: httpx.Response) -> int:
    """The 429's Retry-After: whole seconds, at least one."""
    value = response.headers["Retry-After"]
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


async def test_a_caller_past_its_burst_gets_429_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    """After its burst a caller's next mutating call is 429 rate_limited in the standard
    shape, with an integer Retry-After, whatever the call would have answered."""
    assert await spend(client, ALICE, BURST) == [404] * BURST  # no_active_session
    r = await client.post(RENEW, headers=ALICE)
    err = assert_error(r, 429, "rate_limited")
    assert "alice" in err["message"]
    assert retry_after(r) == 1
    r = await client.post("/fpga/5/submit", files={"file": ("d.py", b"x = 1\n")}, headers=ALICE)
    assert_error(r, 429, "rate_limited")


async def test_the_limit_is_per_key(client: httpx.AsyncClient) -> None:
    """One caller over its limit does not hold back another."""
    await spend(client, ALICE, BURST + 2)
    assert await spend(client, BOB, BURST) == [404] * BURST
    assert_error(await client.post(RENEW, headers=BOB), 429, "rate_limited")


async def test_reads_and_admins_are_not_limited(client: httpx.AsyncClient) -> None:
    """A limited caller still reads (GET) freely, and an admin's mutating calls are never
    limited."""
    await spend(client, ALICE, BURST + 1)
    for _ in range(20):
        assert (await client.get("/fpga/5", headers=ALICE)).status_code == 200
    assert set(await spend(client, OPS, 4 * BURST)) == {404}


async def test_an_unknown_key_is_401_not_429(client: httpx.AsyncClient) -> None:
    """A call with an unknown key is answered 401 while its address is within its own
    limit (test_audit tests that limit), whatever the callers' buckets hold."""
    assert set(await spend(client, {"X-API-Key": "nobody"}, 2 * BURST)) == {401}


async def test_the_bucket_is_shared_by_every_api_replica(
    client: httpx.AsyncClient, replica: httpx.AsyncClient
) -> None:
    """Calls spread over two API apps on one Redis draw from one bucket per caller."""
    statuses = [
        (await (client if n % 2 else replica).post(RENEW, headers=ALICE)).status_code
        for n in range(BURST + 1)
    ]
    assert statuses == [404] * BURST + [429]
    assert_error(await client.post(RENEW, headers=ALICE), 429, "rate_limited")
    assert_error(await replica.post(RENEW, headers=ALICE), 429, "rate_limited")


async def test_a_caller_may_call_again_after_retry_after(client: httpx.AsyncClient) -> None:
    """Once the seconds of Retry-After have passed, the caller's next call goes through."""
    await spend(client, ALICE, BURST)
    refused = await client.post(RENEW, headers=ALICE)
    assert refused.status_code == 429
    await asyncio.sleep(retry_after(refused) + 0.05)
    assert (await client.post(RENEW, headers=ALICE)).status_code == 404


async def test_every_mutating_route_documents_413_and_429(client: httpx.AsyncClient) -> None:
    """Each POST and DELETE route documents 413 and 429 (with Retry-After) in /openapi.json."""
    paths = (await client.get("/openapi.json", headers=OPS)).json()["paths"]
    mutating = [
        (path, op)
        for path, ops in paths.items()
        for m, op in ops.items()
        if m in ("post", "delete")
    ]
    # with /login, /logout, and the pools' POST /submit, DELETE /jobs/{job_id}
    assert len(mutating) == 12, [p for p, _ in mutating]
    for path, op in mutating:
        assert {"413", "429"} <= set(op["responses"]), path
        assert "rate_limited" in op["responses"]["429"]["description"], path
        assert "Retry-After" in op["responses"]["429"]["headers"], path


# -- runs on a board of one's own ------------------------------------------------------

READ = {"op": 2, "address": 0}


async def test_an_owners_runs_on_its_own_board_are_not_held_to_the_shared_limit(
    settings: Settings, start_worker: WorkerFactory
) -> None:
    """With the default limits (10/s, bursts of 50), a board's owner makes 200 back-to-back
    reads, each waited for, and then 60 at once, without a 429: runs on its own reserved
    board cost nobody else. Its calls on what is shared, and another caller's runs on
    that board, still draw from the shared buckets."""
    keyed = settings.model_copy(update={"api_keys": "alice=alice-key,bob=bob-key"})
    assert (keyed.rate_limit, keyed.rate_limit_burst) == (10.0, 50)
    await start_worker(boards=[2, 5])
    async with serve(keyed) as c:
        await reserve(c, 2, headers=ALICE)
        refused = []
        for _ in range(200):
            r = await c.post("/fpga/2/run", json=READ, headers=ALICE)
            if r.status_code != 202:
                refused.append(r.status_code)
                continue
            assert (await wait_job(c, 2, r.json()["job_id"], headers=ALICE))["status"] == "complete"
        assert refused == []
        at_once = [(await c.post("/fpga/2/run", json=READ, headers=ALICE)).status_code
                   for _ in range(60)]  # fmt: skip
        assert set(at_once) == {202}
        # her shared bucket is whole: a burst of renews of a board she does not hold
        assert await spend(c, ALICE, 50) == [404] * 50
        # bob is not the owner: his runs on her board are shared calls, refused past his
        # burst (plus what refills meanwhile)
        bob = [(await c.post("/fpga/2/run", json=READ, headers=BOB)).status_code
               for _ in range(80)]  # fmt: skip
        assert bob[:50] == [403] * 50 and 429 in bob, bob


async def test_runs_on_ones_own_board_have_a_budget_of_their_own(
    app_settings: Settings, start_worker: WorkerFactory
) -> None:
    """FPGALAB_OWN_BOARD_RATE_LIMIT(_BURST) bound an owner's runs on its board: past them
    429 rate_limited (saying which limit) with Retry-After, while its other calls still
    draw from its untouched shared bucket."""
    own = app_settings.model_copy(
        update={"own_board_rate_limit": 1.0, "own_board_rate_limit_burst": 2 * BURST}
    )
    await start_worker(boards=[2])
    async with serve(own) as c:
        await reserve(c, 2, headers=ALICE)  # one shared call of BURST
        statuses = [(await c.post("/fpga/2/run", json=READ, headers=ALICE)).status_code
                    for _ in range(2 * BURST)]  # fmt: skip
        assert statuses == [202] * 2 * BURST
        r = await c.post("/fpga/2/run", json=READ, headers=ALICE)
        err = assert_error(r, 429, "rate_limited")
        assert "runs on a board of its own" in err["message"]
        assert retry_after(r) == 1
        assert await spend(c, ALICE, BURST - 1) == [404] * (BURST - 1)
