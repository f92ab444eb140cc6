"""Redis's memory: shown in /health with a warning, bounded in the private Redis of
``fpgalab serve`` (maxmemory, noeviction), and a full Redis refuses new work with 503
redis_full while it evicts nothing."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from fpgalab.service.redisproc import PrivateRedis
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.helpers import RedisServer, assert_error, register_lab, serve, submit

ALICE = {"X-API-Key": "alice-key"}
OPS = {"X-API-Key": "ops-key"}  # admin


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, whose maxmemory the test sets."""
    server = RedisServer(tmp_path / "small-redis").start()
    yield server
    server.stop()


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def fill(r: redis.Redis) -> int:
    """Write 10 KB strings until Redis refuses one at its maxmemory; how many it took."""
    n = 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        while n < 100_000:
            r.set(f"filler:{n}", "x" * 10_000)
            n += 1
    return n


async def test_health_shows_redis_memory_and_warns(
    client: httpx.AsyncClient, settings: Settings, small_redis: RedisServer
) -> None:
    """/health keeps status and redis, adds Redis's used memory, maxmemory and policy, and
    warns of no maxmemory, of an evicting policy, and of use past the threshold."""
    body = (await client.get("/health")).json()
    assert body["status"] == "ok" and body["redis"] is True
    assert body["memory"]["used_bytes"] > 0 and body["memory"]["max_bytes"] is None
    assert "no maxmemory" in body["warning"]

    with redis.Redis.from_url(small_redis.url) as r:
        limit = 4 * used_memory(r)
        r.config_set("maxmemory", limit)
        async with serve(settings.model_copy(update={"redis_url": small_redis.url})) as c:
            r1 = await c.get("/health")
            assert r1.status_code == 200 and r1.json()["warning"] is None
            assert r1.json()["memory"] == {
                "used_bytes": r1.json()["memory"]["used_bytes"], "max_bytes": limit,
                "policy": "noeviction",
            }  # fmt: skip
            n = 0
            while used_memory(r) < 0.85 * limit:
                r.set(f"filler:{n}", "x" * 10_000)
                n += 1
            r2 = await c.get("/health")
            assert r2.status_code == 200 and r2.json()["status"] == "ok"
            assert "% of its maxmemory" in r2.json()["warning"], r2.json()
            assert "redis_full" in r2.json()["warning"]
            r.config_set("maxmemory-policy", "allkeys-lru")
            assert "evicts keys" in (await c.get("/health")).json()["warning"]


async def test_a_full_redis_refuses_new_work_and_evicts_nothing(
    settings: Settings, small_redis: RedisServer
) -> None:
    """At its maxmemory (noeviction) a submit is 503 redis_full, from the rate limit's
    bucket (a caller) or the submit itself (an admin); reads, /health and /audit still
    answer, no key is evicted or written; once there is room the submit goes through."""
    lab = settings.model_copy(
        update={"redis_url": small_redis.url, "api_keys": "alice=alice-key,ops=ops-key:admin"}
    )
    register_lab(small_redis.url)
    with redis.Redis.from_url(small_redis.url, decode_responses=True) as r:
        async with serve(lab) as c:
            store = Store.from_url(small_redis.url, lab)
            try:
                await store.set_health(0, "check", "good", "")
                await store.set_health(1, "maintenance", "maintenance", "")  # refuses
            finally:
                await store.close()
            for who in (ALICE, OPS):  # every script this test calls, loaded before
                assert_error(await submit(c, 1, headers=who), 409, "fpga_unavailable")
            r.config_set("maxmemory", used_memory(r) + 2 * 1024 * 1024)
            assert fill(r) > 0
            # past it for sure: the last refused write's buffer, freed, may leave a little
            # room, enough for a submit
            r.config_set("maxmemory", used_memory(r) - 64 * 1024)
            before = {key: r.type(key) for key in r.scan_iter(count=1000)}

            for who in (ALICE, OPS):
                refused = await submit(c, 0, headers=who)
                assert "full" in assert_error(refused, 503, "redis_full")["message"]
                assert int(refused.headers["Retry-After"]) >= 1
            assert (await c.get("/fpga/0", headers=ALICE)).json()["state"] == "idle"
            health = (await c.get("/health")).json()
            assert health["status"] == "ok" and "redis_full" in health["warning"]
            assert (await c.get("/audit", headers=OPS)).status_code == 200
            assert {key: r.type(key) for key in r.scan_iter(count=1000)} == before

            for key in r.scan_iter("filler:*", count=1000):
                r.delete(key)
            accepted = await submit(c, 0, headers=ALICE)
            assert accepted.status_code == 202, accepted.text


def test_the_private_redis_has_a_maxmemory_and_never_evicts() -> None:
    """``fpgalab serve``'s private redis-server runs with the maxmemory it is given and
    maxmemory-policy noeviction."""
    with tempfile.TemporaryDirectory(prefix="fpgalab-") as folder:
        private = PrivateRedis(Path(folder) / "redis", "64mb")
        private.start()
        try:
            with redis.Redis(unix_socket_path=str(private.socket)) as r:
                assert r.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
                assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        finally:
            private.stop()
