"""Per-caller rate limiting of mutating calls: a token bucket in Redis, shared by every
API replica; 429 rate_limited with Retry-After; admins and reads are not limited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from service.settings import Settings
from tests.helpers import assert_error, serve

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
    assert len(mutating) == 8, [p for p, _ in mutating]
    for path, op in mutating:
        assert {"413", "429"} <= set(op["responses"]), path
        assert "rate_limited" in op["responses"]["429"]["description"], path
        assert "Retry-After" in op["responses"]["429"]["headers"], path
