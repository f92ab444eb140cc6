"""No secrets in logs: a whole keyed session through the API on real uvicorn (access log
on), with every service log at DEBUG and every job log read, never shows an API key or
a session id; no raw key is stored in Redis or shown by the settings."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fpgalab.service import keys
from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.conftest import WorkerFactory
from tests.helpers import free_port, wait_for, wait_job, wait_state

#: Distinctive key texts, so that a leak anywhere is visible.
ALICE_KEY = "alice-key-4f0b2c9d7e"
BOB_KEY = "bob-key-8a1e6d3f52"
OPS_KEY = "ops-key-c7d93b0a1f"
ALL_KEYS = (ALICE_KEY, BOB_KEY, OPS_KEY)
ALICE = {"X-API-Key": ALICE_KEY}
BOB = {"X-API-Key": BOB_KEY}
OPS = {"X-API-Key": OPS_KEY}
LOGGERS = ("fpgalab", "uvicorn", "uvicorn.access", "uvicorn.error", "uvicorn.asgi")


class UvicornThread:
    """The app under real uvicorn on a loopback port, in a thread, logging through the
    standard ``logging`` tree (``log_config=None``) with its access log on."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, lifespan="on",
            log_config=None, log_level="debug", access_log=True, ws="none",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="secrets-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the service's and uvicorn's loggers, from DEBUG up."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    """Keys for alice, bob and ops (admin); sessions that expire after 2 s unless renewed."""
    return settings.model_copy(
        update={
            "api_keys": f"alice={ALICE_KEY},bob={BOB_KEY},ops={OPS_KEY}:admin",
            "session_ttl": 2,
        }
    )


@pytest.fixture
async def live(
    keyed_settings: Settings, start_worker: WorkerFactory, logs: pytest.LogCaptureFixture
) -> AsyncIterator[httpx.AsyncClient]:
    """The keyed lab on a real socket, with a worker serving every board."""
    with UvicornThread(keyed_settings) as url:
        await start_worker()
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client


async def every_job_log(client: httpx.AsyncClient, store: Store) -> str:
    """The text of every job's log: through the API (as admin) and straight from Redis."""
    texts = []
    async for key in store.redis.scan_iter(match=keys.job("*"), count=1000):
        if key.count(":") != 2:
            continue
        record = await store.redis.hgetall(key)
        r = await client.get(f"/fpga/{record['fpga_id']}/jobs/{record['job_id']}/logs", headers=OPS)
        assert r.status_code == 200, r.text
        texts.append(r.text)
        texts.extend(await store.logs(record["job_id"]))
    assert texts
    return "\n".join(texts)


async def everything_in_redis(store: Store) -> str:
    """Every key and value in Redis, as text."""
    parts: list[str] = []
    async for key in store.redis.scan_iter(count=1000):
        kind = await store.redis.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(await store.redis.get(key))
        elif kind == "hash":
            parts.append(repr(await store.redis.hgetall(key)))
        elif kind == "set":
            parts.append(repr(await store.redis.smembers(key)))
        elif kind == "zset":
            parts.append(repr(await store.redis.zrange(key, 0, -1, withscores=True)))
        elif kind == "stream":
            parts.append(repr(await store.redis.xrange(key)))
    return "\n".join(parts)


async def test_a_whole_session_logs_no_key_and_no_session_id(
    live: httpx.AsyncClient, logs: pytest.LogCaptureFixture, store: Store
) -> None:
    """Submit, runs, refusals, renew, a failed build, an expired session, release and the
    audit trail: no log line and no job log holds a key or a session id, and no raw key
    is stored in Redis."""
    c = live
    accepted = (
        await c.post(
            "/fpga/1/submit", files={"file": ("design.py", b"Design = None\n")},
            headers={**ALICE, "Idempotency-Key": "first-try"},
        )
    ).json()  # fmt: skip
    sid = accepted["session_id"]
    mine = {**ALICE, "X-Session-ID": sid}
    await c.post("/fpga/1/session/renew", json={"seconds": 600}, headers=mine)
    assert (await wait_job(c, 1, accepted["job_id"], headers=ALICE))["status"] == "complete"
    run = await c.post("/fpga/1/run", json={"op": 1, "address": 0, "data": [7]}, headers=mine)
    await wait_job(c, 1, run.json()["job_id"], headers=ALICE)
    assert (await c.get(f"/fpga/1/jobs/{run.json()['job_id']}/result", headers=ALICE)).json()["ok"]
    assert (await c.get("/fpga/1/memory-map", headers=ALICE)).status_code == 200

    read = {"op": 2, "address": 0}
    refusals = [
        await c.post("/fpga/1/run", json=read, headers={**BOB, "X-Session-ID": sid}),
        await c.post("/fpga/1/run", json=read, headers={**ALICE, "X-Session-ID": "x" + sid}),
        await c.get(f"/fpga/1/jobs/{accepted['job_id']}/logs", headers=BOB),
        await c.get("/fpga/1/memory-map", headers=BOB),
        await c.post("/fpga/1/reset", headers={"X-API-Key": ALICE_KEY + "x", "X-Session-ID": sid}),
        await c.get("/fpga", headers={"X-API-Key": OPS_KEY[:-1]}),
        await c.get("/audit", headers=ALICE),
    ]  # fmt: skip
    assert [r.status_code for r in refusals] == [403, 403, 403, 403, 401, 401, 403]

    failed = (
        await c.post("/fpga/2/submit", files={"file": ("bad.py", b"FAIL_BUILD\n")}, headers=BOB)
    ).json()
    assert (await wait_job(c, 2, failed["job_id"], headers=BOB))["status"] == "failed"
    await c.post("/fpga/2/reset", headers={**BOB, "X-Session-ID": failed["session_id"]})
    await wait_state(c, 2, "idle", headers=BOB)
    expiring = (
        await c.post("/fpga/3/submit", files={"file": ("d.py", b"Design = None\n")}, headers=BOB)
    ).json()
    await wait_state(c, 3, "reserved", headers=BOB)
    await wait_state(c, 3, "idle", headers=BOB, timeout=15)  # expired and reset on its own

    release = await c.post("/fpga/1/session/release", headers=mine)
    await wait_job(c, 1, release.json()["job_id"], headers=ALICE)
    assert (await c.get("/audit", headers=OPS)).status_code == 200

    async def access_logged() -> bool:
        return any(r.name == "uvicorn.access" and "/audit" in r.getMessage() for r in logs.records)

    await wait_for(access_logged)
    names = {r.name for r in logs.records}
    assert {"uvicorn.access", "fpgalab.worker"} <= names, names  # both were captured

    secrets = (*ALL_KEYS, sid, failed["session_id"], expiring["session_id"])
    lines = [f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in logs.records] + [
        logs.text
    ]
    job_logs = await every_job_log(c, store)
    for secret in secrets:
        leaks = [line for line in lines if secret in line]
        assert not leaks, (secret, leaks)
        assert secret not in job_logs, secret
    stored = await everything_in_redis(store)
    for key in ALL_KEYS:
        assert key not in stored, key


def test_the_settings_never_show_the_keys(keyed_settings: Settings) -> None:
    """The settings' repr (what a log of them would show) leaves the keys out."""
    for key in ALL_KEYS:
        assert key not in repr(keyed_settings) and key not in str(keyed_settings)
