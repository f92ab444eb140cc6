"""Redis that survives its primary: the lab behind Redis Sentinel (one primary, one
replica, three sentinels) loses no accepted job when its primary is killed under load,
answers ``503 redis_unavailable`` only for the failover's window, and serves again on
the new primary: its worker's queue reads, its subscription and its event-log reader
included. With ``FPGALAB_REDIS_WAIT_REPLICAS`` a replica that does not confirm a job in
time makes its answer a ``503``, the job queued, and a retry with the same
Idempotency-Key answers ``202`` with it once the replica has it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import ValidationError

from fpgalab.service.app import create_app
from fpgalab.service.events import Filter
from fpgalab.service.settings import SentinelURL, Settings
from fpgalab.service.store import Actor, Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    FINISHED,
    RedisServer,
    Sentinels,
    assert_error,
    jobs_in_redis,
    register_lab,
    replicate,
    serve,
    wait_for,
    wait_set,
)

BOARDS = (0, 1, 2, 3)
DESIGN = b"# a design\nDesign = None\n"
RUN = {"op": 1, "address": 256, "data": [0xDEADBEEF]}
#: Between a 503 and the retry; and between looks at a job or board.
PAUSE = 0.05
#: Cycles (submit, run, release) each board completes once a replica is back.
CYCLES_AFTER = 2


@pytest.fixture
def sentinel_tool() -> None:
    """redis-sentinel, or a skip (a failure in CI, which installs it)."""
    if shutil.which("redis-sentinel") is None:
        if os.environ.get("CI"):  # CI installs it (make system): missing is a failure there
            raise RuntimeError("redis-sentinel is not installed (make system installs it)")
        pytest.skip("redis-sentinel is not installed (apt-get install redis-sentinel)")


@dataclass
class Group:
    """A primary, its replica and three sentinels watching them; ``replacement``, a
    replica started after a failover."""

    primary: RedisServer
    replica: RedisServer
    sentinels: Sentinels
    replacement: RedisServer | None = None


@pytest.fixture
def group(tmp_path: Path, sentinel_tool: None) -> Iterator[Group]:
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    found = Group(primary, replica, Sentinels(tmp_path, primary.port))
    try:
        replicate(replica, primary.port)
        found.sentinels.start(replicas=1)
        yield found
    finally:
        found.sentinels.stop()
        for server in (primary, replica, found.replacement):
            if server is not None:
                server.stop()


def lab_settings(url: str, tmp_path: Path) -> Settings:
    """An open lab without rate limits, on ``url``, waiting for one replica per job."""
    return Settings(
        redis_url=url, data_dir=tmp_path / "data", api_keys="", rate_limit=0,
        worker_heartbeat_ttl=1.5, housekeeping_interval=0.1, health_interval=3600,
        redis_timeout=1.0, redis_wait_replicas=1, event_client_buffer=100_000,
    )  # fmt: skip


class Unexpected(AssertionError):
    """An answer neither normal nor ``503 redis_unavailable``."""


@dataclass
class Calls:
    """Every call the load made: the 503s (when), what else was not its normal answer,
    and the jobs answered 202 (job id -> board, when)."""

    client: httpx.AsyncClient
    unavailable: list[tuple[float, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    accepted: dict[str, tuple[int, float]] = field(default_factory=dict)
    cycles: dict[int, list[float]] = field(default_factory=dict)

    async def call(self, method: str, path: str, expect: int, **kw: Any) -> Any:
        """The answer's body, or None for a 503 redis_unavailable (noted)."""
        r = await self.client.request(method, path, **kw)
        if r.status_code == expect:
            return r.json()
        if r.status_code == 503 and r.json()["detail"]["error"] == "redis_unavailable":
            self.unavailable.append((time.monotonic(), f"{method} {path}"))
            return None
        self.unexpected.append(f"{method} {path}: {r.status_code} {r.text}")
        raise Unexpected(self.unexpected[-1])

    async def accept(self, board: int, path: str, **kw: Any) -> str:
        """POST until it is answered 202, each retry with the same Idempotency-Key."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        while True:
            body = await self.call("POST", path, 202, headers=headers, **kw)
            if body is not None:
                self.accepted[body["job_id"]] = (board, time.monotonic())
                return str(body["job_id"])
            await asyncio.sleep(PAUSE)

    async def look(self, path: str) -> dict[str, Any]:
        """GET until it is answered 200."""
        while True:
            body = await self.call("GET", path, 200)
            if body is not None:
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(PAUSE)

    async def until(self, board: int, what: str, field: str, wanted: Any) -> dict[str, Any]:
        """GET ``what`` of the board (``""`` or ``/jobs/ID?wait=2``: the subscription)
        until its ``field`` is in ``wanted``."""
        while True:
            body = await self.look(f"/fpga/{board}{what}")
            if body[field] in wanted:
                return body
            await asyncio.sleep(PAUSE)

    async def finished(self, board: int, job_id: str) -> None:
        """Wait for the job, and check that it completed."""
        job = await self.until(board, f"/jobs/{job_id}?wait=2", "status", FINISHED)
        if job["status"] != "complete":
            self.unexpected.append(f"job {job_id} on board {board}: {job}")
            raise Unexpected(self.unexpected[-1])

    async def cycle(self, board: int) -> None:
        """Reserve the board (a design), run on it, release it."""
        base = f"/fpga/{board}"
        design = {"file": ("d.py", DESIGN)}
        await self.finished(board, await self.accept(board, f"{base}/submit", files=design))
        await self.finished(board, await self.accept(board, f"{base}/run", json=RUN))
        # a release has no Idempotency-Key: after a 503, look before repeating it
        while True:
            body = await self.call("POST", f"{base}/session/release", 202)
            if body is not None:
                self.accepted[body["job_id"]] = (board, time.monotonic())
                await self.finished(board, body["job_id"])
                break
            await asyncio.sleep(PAUSE)
            if (await self.look(base))["state"] != "reserved":
                break  # it went through, its answer lost
        await self.until(board, "", "state", ("idle",))
        self.cycles.setdefault(board, []).append(time.monotonic())

    async def load(self, board: int, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.cycle(board)

    async def watch(self, stopping: asyncio.Event) -> None:
        """Read the boards every 20 ms, as a dashboard does: the reads' 503s say how long
        the lab had no primary."""
        while not stopping.is_set():
            await self.call("GET", "/fpga", 200)
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def lab(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app over ASGI, as ``tests.helpers.serve`` runs it, and the app itself."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lab") as c:
            yield c, app


async def test_killing_the_primary_under_load_loses_no_accepted_job(
    group: Group, tmp_path: Path, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """Four boards cycling (submit, run, release) while the primary is killed: every
    job answered 202 completes, every other answer is its normal one or a 503 while
    there is no primary (or, waiting for one replica, none to confirm), and the lab
    then serves from the new primary, with a new replica."""
    settings = lab_settings(group.sentinels.url, tmp_path)
    async with lab(settings) as (client, app):
        await start_worker(BOARDS, worker_settings=settings)
        calls = Calls(client)
        events: dict[str, float] = {}  # job id -> when the event hub first offered it

        async def watch() -> None:
            async with app.state.events.subscribe(Filter("test", admin=True)) as sub:
                while True:
                    event = await sub.queue.get()
                    if event.job_id:
                        events.setdefault(event.job_id, time.monotonic())

        watcher = asyncio.create_task(watch())
        stopping = asyncio.Event()
        loads = [asyncio.create_task(calls.load(b, stopping)) for b in BOARDS]
        loads.append(asyncio.create_task(calls.watch(stopping)))
        try:
            # under way: a cycle done on every board
            await wait_for(_going(loads, lambda: all(calls.cycles.get(b) for b in BOARDS)))
            killed = time.monotonic()
            group.primary.kill()

            async def new_primary() -> int | None:
                port = await asyncio.to_thread(group.sentinels.primary)
                return port if port != group.primary.port else None

            failed_over = await wait_for(_going(loads, new_primary), timeout=30)
            named = time.monotonic()
            # the old replica is the primary now, without a replica of its own: a new one
            group.replacement = RedisServer(tmp_path / "replacement").start()
            await asyncio.to_thread(replicate, group.replacement, failed_over)
            replicated = time.monotonic()

            def served_since() -> bool:
                return all(
                    sum(t > replicated for t in calls.cycles[b]) >= CYCLES_AFTER for b in BOARDS
                )

            await wait_for(_going(loads, served_since), timeout=30)
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.gather(*loads, return_exceptions=True), 30)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        assert not calls.unexpected, calls.unexpected

        # every job answered 202 is in Redis (now the new primary's), finished
        for job_id, (board, _) in calls.accepted.items():
            r = await client.get(f"/fpga/{board}/jobs/{job_id}")
            assert r.status_code == 200, (job_id, r.text)
            assert r.json()["status"] == "complete", r.json()
        # the event log's reader of this API process reads the new primary's log
        after = [j for j, (_, t) in calls.accepted.items() if t > replicated]
        assert after and all(j in events for j in after), (len(after), len(events))
        # the subscription is on the new primary: a waiting request is woken at once
        await _woken_at_once(client, backend)

    # 503s only while there is no primary (reads), or (waiting for one replica) none to
    # confirm a job: until the new replica has synced, and a retry's pause after it
    assert all(t >= killed for t, _ in calls.unavailable), calls.unavailable[:3]
    reads = [t - killed for t, what in calls.unavailable if what.startswith("GET")]
    accepts = [t - killed for t, what in calls.unavailable if what.startswith("POST")]
    assert reads and max(reads) < named - killed + 1.0, (reads[-3:], named - killed)
    assert max(accepts, default=0) < replicated - killed + 1.0, (accepts[-3:], replicated)
    print(
        f"\nfailover: the sentinels named the new primary {named - killed:.2f} s after the "
        f"kill, a new replica had synced {replicated - killed:.2f} s after it; reads "
        f"answered 503 until {max(reads):.2f} s, changes until {max(accepts, default=0):.2f} "
        f"s ({len(calls.unavailable)} answers 503); {len(calls.accepted)} jobs answered "
        "202, all complete"
    )


def _going(tasks: list[asyncio.Task[None]], check: Callable[[], Any]) -> Callable[[], Any]:
    """``check`` for ``wait_for`` (it may be async); but a load task that ended (an
    unexpected answer) fails the wait at once."""

    async def checked() -> Any:
        for task in tasks:
            if task.done():
                task.result()
                raise AssertionError("a load task ended")
        value = check()
        return await value if asyncio.iscoroutine(value) else value

    return checked


async def _woken_at_once(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    """A run held in the backend, a request waiting for it: released, the request is
    answered within a second (woken by the job's event), not at its 10 s deadline."""
    r = await client.post("/fpga/0/submit", files={"file": ("d.py", DESIGN)})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    await wait_for(lambda: _status(client, job_id, "complete"))
    backend.hold, backend.hold_boards = {"transact"}, {0}
    r = await client.post("/fpga/0/run", json=RUN)
    assert r.status_code == 202, r.text
    waiting = asyncio.create_task(client.get(f"/fpga/0/jobs/{r.json()['job_id']}?wait=10"))
    await wait_set(backend.held)
    resumed = time.monotonic()
    backend.resume.set()
    answer = await waiting
    assert answer.json()["status"] == "complete", answer.text
    assert time.monotonic() - resumed < 1.0


async def _status(client: httpx.AsyncClient, job_id: str, status: str) -> bool:
    r = await client.get(f"/fpga/0/jobs/{job_id}")
    return r.status_code == 200 and r.json()["status"] == status


async def test_a_replica_that_does_not_confirm_makes_the_answer_a_503(
    tmp_path: Path, start_worker: WorkerFactory
) -> None:
    """Waiting for one replica that is stopped: the submit is answered ``503
    redis_unavailable`` after half ``redis_timeout``, naming its job, which is queued on
    the primary; once the replica runs again, the same Idempotency-Key answers ``202``
    with that job (replayed), which then runs."""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    try:
        replicate(replica, primary.port)
        settings = lab_settings(primary.url, tmp_path)
        async with serve(settings) as client:
            await start_worker([0, 1], worker_settings=settings)
            # the script is loaded now (a first call that finds it missing sends the
            # pipeline twice: it may wait for the replica twice)
            r = await client.post("/fpga/1/submit", files={"file": ("d.py", DESIGN)})
            assert r.status_code == 202, r.text
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGSTOP)
            try:
                key = {"Idempotency-Key": "one-build"}
                started = time.monotonic()
                r = await client.post(
                    "/fpga/0/submit", files={"file": ("d.py", DESIGN)}, headers=key
                )
                took = time.monotonic() - started
                detail = assert_error(r, 503, "redis_unavailable")
                assert "confirmed" in detail["message"], detail
                assert 0.5 <= took < 1.0, took
                with redis.Redis.from_url(primary.url, decode_responses=True) as direct:
                    [job_id] = [
                        key.rpartition(":")[2]
                        for key in direct.keys("fpgalab:job:????????????????????????????????")
                        if direct.hget(key, "fpga_id") == "0"
                    ]
                assert job_id in detail["message"], detail
            finally:
                replica.proc.send_signal(signal.SIGCONT)
            r = await client.post("/fpga/0/submit", files={"file": ("d.py", DESIGN)}, headers=key)
            assert r.status_code == 202, r.text
            assert r.json()["job_id"] == job_id and r.json()["replayed"] is True, r.json()
            await wait_for(lambda: _status(client, job_id, "complete"))
    finally:
        replica.stop()
        primary.stop()


async def test_a_primary_without_the_scripts_loads_them_and_waits(tmp_path: Path) -> None:
    """Waiting for a replica, a job is accepted by a primary that lacks the lab's scripts
    (a replica promoted by a failover before the library reached it, or one restarted
    without its data): loaded, run once, and confirmed by the replica."""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    try:
        replicate(replica, primary.port)
        register_lab(primary.url, [0])
        store = Store.from_url(primary.url, lab_settings(primary.url, tmp_path))
        try:
            await store.redis.script_flush()
            await store.redis.function_flush()
            reply = await store.submit(0, Actor("alice", admin=True), "d.py", "x", "sha", "k")
            assert reply["status"] == "queued", reply
            assert len(await jobs_in_redis(store)) == 1
            with redis.Redis.from_url(replica.url, decode_responses=True) as r:
                assert r.exists(f"fpgalab:job:{reply['job_id']}")
        finally:
            await store.close()
    finally:
        replica.stop()
        primary.stop()


def test_a_sentinel_url_names_the_sentinels_the_primary_and_its_database() -> None:
    """``redis+sentinel://`` URLs parse (default port, IPv6, user and password of the
    data nodes); a malformed one stops the start with the form it should have."""
    url = "redis+sentinel://lab:pw@s1,s2:26380,[::1]:26381/fpgalab/2"
    assert SentinelURL.parse(url) == SentinelURL(
        (("s1", 26379), ("s2", 26380), ("::1", 26381)), "fpgalab", 2, "lab", "pw"
    )
    assert SentinelURL.parse("redis://127.0.0.1:6379/0") is None
    for bad in ("redis+sentinel://s1/", "redis+sentinel://s1:x/m", "redis+sentinel://,s2/m",
                "redis+sentinel://s1/m/0/1", "redis+sentinel://s1/m?db=1"):  # fmt: skip
        with pytest.raises(ValidationError, match="expected redis\\+sentinel://"):
            Settings(redis_url=bad)


async def test_the_password_file_is_the_data_nodes_not_the_sentinels(tmp_path: Path) -> None:
    """Behind Sentinel the password file (and the URL's user) is sent to the primary and
    its replicas; the sentinels are asked without one."""
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    url = "redis+sentinel://fpgalab@127.0.0.1:26379/fpgalab/1"
    store = Store.from_url(url, Settings(redis_url=url, redis_password_file=secret))
    try:
        data = store.redis.connection_pool.connection_kwargs
        assert (data["username"], data["password"], data["db"]) == ("fpgalab", "s3cret", 1)
        assert store.redis.connection_pool.max_connections == Settings().redis_max_connections
        assert store._sentinel is not None
        for sentinel in store._sentinel.sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            assert kwargs.get("password") is None and kwargs.get("username") is None
    finally:
        await store.close()
