"""The audit trail: every mutating call, refused ones included, recorded once in a
capped Redis Stream and readable by admins at GET /audit."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from fpgalab.service import keys
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.fakes import FakeBackend
from tests.helpers import assert_error, reserve, serve, submit, wait_job

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
OPS = {"X-API-Key": "ops-key"}  # admin
BURST = 20
#: Calls with unknown keys an address may make before they are refused and counted.
UNKNOWN_BURST = 5
#: The window over which an address's refused unknown-key calls become one record (s).
WINDOW = 1.0


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Keys for alice, bob and ops (admin); a bucket of 20 calls; a small audit stream;
    5 calls with unknown keys per address, then (almost) none, counted per second."""
    return settings.model_copy(
        update={
            "api_keys": "alice=alice-key,bob=bob-key,ops=ops-key:admin",
            "rate_limit": 0.5,
            "rate_limit_burst": BURST,
            "audit_max_entries": 50,
            "unknown_key_burst": UNKNOWN_BURST,
            "unknown_key_rate_limit": 0.001,
            "unknown_key_window": WINDOW,
        }
    )


async def audit(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/audit", params=params, headers=OPS)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def brief(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (
        entry["caller"], entry["method"], entry["action"], entry["fpga_id"], entry["status"],
        entry["error"],
    )  # fmt: skip


async def test_every_mutating_call_is_recorded_once_with_its_outcome(
    lab: httpx.AsyncClient,
) -> None:
    """A session's calls, a refused run by another caller, an unknown key, an invalid body
    and an admin's maintenance are each one record (newest first); reads are none."""
    t0 = time.time()
    accepted = await reserve(lab, 1, headers=ALICE)
    run = await lab.post("/fpga/1/run", json={"op": 2, "address": 0}, headers=ALICE)
    await wait_job(lab, 1, run.json()["job_id"], headers=ALICE)
    assert_error(
        await lab.post("/fpga/1/run", json={"op": 2, "address": 0}, headers=BOB),
        403, "not_session_owner",
    )  # fmt: skip
    assert_error(
        await lab.post("/fpga/1/run", json={"op": 7}, headers=ALICE), 422, "validation_error"
    )
    assert_error(
        await lab.post("/fpga/2/reset", headers={"X-API-Key": "wrong"}), 401, "invalid_api_key"
    )
    assert (await lab.post("/fpga/3/maintenance", headers=OPS)).status_code == 200
    release = await lab.post("/fpga/1/session/release", headers=ALICE)
    await wait_job(lab, 1, release.json()["job_id"], headers=ALICE)
    for _ in range(3):
        await lab.get("/fpga", headers=ALICE)
    t1 = time.time()

    entries = await audit(lab)
    assert [brief(e) for e in entries] == [
        ("alice", "POST", "release", 1, 202, None),
        ("ops", "POST", "maintenance", 3, 200, None),
        (None, "POST", "reset", 2, 401, "invalid_api_key"),
        ("alice", "POST", "run", 1, 422, "validation_error"),
        ("bob", "POST", "run", 1, 403, "not_session_owner"),
        ("alice", "POST", "run", 1, 202, None),
        ("alice", "POST", "submit", 1, 202, None),
    ]
    job_ids = [e["job_id"] for e in entries]
    assert job_ids[0] == release.json()["job_id"]
    assert job_ids[-2:] == [run.json()["job_id"], accepted["job_id"]]
    assert job_ids[1:5] == [None] * 4
    assert [e["path"] for e in entries][-1] == "/fpga/1/submit"
    for e in entries:
        at = datetime.fromisoformat(e["at"]).timestamp()
        assert t0 - 1 <= at <= t1 + 1, e  # the Redis server's clock, the same host's
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)


async def test_a_cancel_names_its_job_and_a_refusal_its_code(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A DELETE is recorded with the job id of its path; a refused cancel with its code."""
    build = (await submit(lab, 4, "GATE\n", headers=ALICE)).json()["job_id"]  # the build waits
    queued = await submit(lab, 4, headers=ALICE)
    assert_error(queued, 409, "fpga_not_idle")
    assert_error(await lab.delete(f"/fpga/4/jobs/{build}", headers=BOB), 403, "not_session_owner")
    entries = await audit(lab, fpga_id=4)
    assert [(e["action"], e["status"], e["error"], e["job_id"]) for e in entries] == [
        ("cancel_job", 403, "not_session_owner", build),
        ("submit", 409, "fpga_not_idle", None),
        ("submit", 202, None, build),
    ]
    backend.release_gate()


async def test_rate_limited_and_oversized_calls_are_recorded(
    client: httpx.AsyncClient, app_settings: Settings
) -> None:
    """A call refused by the rate limit (429) and one refused for its size (413) are
    recorded with their codes."""
    big = b"x" * (app_settings.max_body_bytes + 1)
    assert_error(
        await client.post("/fpga/6/reset", content=big, headers=ALICE), 413, "request_too_large"
    )
    for _ in range(BURST):
        await client.post("/fpga/6/session/renew", headers=ALICE)
    assert_error(await client.post("/fpga/6/session/renew", headers=ALICE), 429, "rate_limited")
    entries = await audit(client, caller="alice")
    assert brief(entries[0]) == ("alice", "POST", "renew", 6, 429, "rate_limited")
    assert brief(entries[-1]) == ("alice", "POST", "reset", 6, 413, "request_too_large")
    assert len(entries) == BURST + 2


async def test_filters_limit_and_paging(client: httpx.AsyncClient) -> None:
    """Entries filter by board and caller, stop at limit, and page on with before."""
    for fpga_id in (1, 2, 1, 2, 1):
        await client.post(f"/fpga/{fpga_id}/session/renew", headers=ALICE)
    await client.post("/fpga/1/session/renew", headers=BOB)
    assert len(await audit(client)) == 6
    assert [e["caller"] for e in await audit(client, fpga_id=1)] == [
        "bob",
        "alice",
        "alice",
        "alice",
    ]
    assert {e["fpga_id"] for e in await audit(client, caller="alice", fpga_id=2)} == {2}
    assert len(await audit(client, caller="alice", fpga_id=2)) == 2
    first = await audit(client, fpga_id=1, limit=2)
    rest = await audit(client, fpga_id=1, limit=2, before=first[-1]["id"])
    assert [e["id"] for e in first + rest] == [e["id"] for e in await audit(client, fpga_id=1)]
    assert await audit(client, before="0-0") == []
    assert await audit(client, caller="nobody") == []


async def test_only_admins_read_the_trail(client: httpx.AsyncClient) -> None:
    """GET /audit is 403 admin_required for a non-admin and 401 without a key."""
    assert_error(await client.get("/audit", headers=ALICE), 403, "admin_required")
    assert_error(await client.get("/audit"), 401, "invalid_api_key")


async def test_the_stream_is_capped(client: httpx.AsyncClient, store: Store) -> None:
    """The audit stream is trimmed near audit_max_entries (Redis trims whole nodes of
    100 entries, so it may run over by less than one node)."""
    for _ in range(300):
        await client.post("/fpga/7/online", headers=OPS)
    length = await store.redis.xlen(keys.AUDIT)
    assert 50 <= length < 50 + 100, length
    assert len(await audit(client, limit=1000)) == length


# -- calls with unknown keys ------------------------------------------------------------


def made_up(n: int, **headers: str) -> dict[str, str]:
    return {"X-API-Key": f"made-up-key-{n}", **headers}


async def test_a_flood_of_unknown_keys_is_counted_and_leaves_the_trail_alone(
    client: httpx.AsyncClient,
) -> None:
    """600 calls with made-up keys from one address: the first few are recorded (401), the
    rest are 429 rate_limited with Retry-After and counted, one record per window, and the
    real records written before are all still in the trail."""
    for fpga_id in (1, 2, 3):
        await client.post(f"/fpga/{fpga_id}/session/renew", headers=ALICE)
    real = await audit(client)
    assert [e["caller"] for e in real] == ["alice"] * 3

    started = time.monotonic()
    answers = []
    for batch in range(0, 600, 50):
        answers += await asyncio.gather(
            *(client.post("/fpga/2/reset", headers=made_up(n)) for n in range(batch, batch + 50))
        )
    windows = int((time.monotonic() - started) / WINDOW) + 1
    statuses = [r.status_code for r in answers]
    assert statuses.count(401) == UNKNOWN_BURST and statuses.count(429) == 600 - UNKNOWN_BURST
    refused = next(r for r in answers if r.status_code == 429)
    assert "127.0.0.1" in assert_error(refused, 429, "rate_limited")["message"]
    assert int(refused.headers["Retry-After"]) >= 1

    await asyncio.sleep(WINDOW + 0.1)  # the last window closes: its count is written
    entries = await audit(client, limit=1000)
    assert [e for e in entries if e["caller"] == "alice"] == real
    flood = [e for e in entries if e["caller"] is None]
    assert {e["client"] for e in flood} == {"127.0.0.1"}
    recorded = [e for e in flood if e["count"] is None]
    counted = [e for e in flood if e["count"] is not None]
    assert [e["status"] for e in recorded].count(401) == UNKNOWN_BURST
    refusals = [e for e in recorded if e["status"] == 429]
    assert {(e["error"], e["action"]) for e in refusals} == {("rate_limited", "reset")}
    assert {(e["status"], e["error"]) for e in counted} == {(429, "rate_limited")}
    assert len(refusals) + sum(e["count"] for e in counted) == 600 - UNKNOWN_BURST
    assert 1 <= len(counted) <= len(refusals) <= windows
    assert len(await audit(client, limit=1000)) == len(entries)  # a count is written once


async def test_the_client_is_the_socket_peer_unless_a_trusted_proxy_names_it(
    app_settings: Settings,
) -> None:
    """Made-up X-Forwarded-For headers give a flood no new addresses; behind a trusted
    proxy (FPGALAB_TRUSTED_PROXIES) the header names the client, each with its own limit."""
    async with serve(app_settings) as c:
        statuses = []
        for n in range(UNKNOWN_BURST + 1):
            spoofed = made_up(n, **{"X-Forwarded-For": f"10.9.0.{n}"})
            statuses.append((await c.post("/fpga/2/reset", headers=spoofed)).status_code)
        assert statuses == [401] * UNKNOWN_BURST + [429]

    proxied = app_settings.model_copy(update={"trusted_proxies": "127.0.0.1, 10.0.0.0/8"})
    async with serve(proxied) as c:
        for n in range(2 * UNKNOWN_BURST):
            # the client's own hop (left) is its to make up; the proxy appended 198.51.100.n
            via = {"X-Forwarded-For": f"6.6.6.6, 198.51.100.{n}, 10.1.2.3"}
            assert (await c.post("/fpga/2/reset", headers=made_up(n, **via))).status_code == 401
        one = {"X-Forwarded-For": "198.51.100.77"}
        for n in range(UNKNOWN_BURST):
            assert (await c.post("/fpga/2/reset", headers=made_up(n, **one))).status_code == 401
        refused = await c.post("/fpga/2/reset", headers=made_up(0, **one))
        assert "198.51.100.77" in assert_error(refused, 429, "rate_limited")["message"]
        entries = (await c.get("/audit", headers=OPS)).json()
        assert entries[0]["client"] == "198.51.100.77"
        assert "6.6.6.6" not in {e["client"] for e in entries}
