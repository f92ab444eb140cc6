"""The worker: death mid-job, adoption of queued jobs, board leases, Redis
outages and restarts, boards in parallel, and logs that stream while a job runs.

Workers that must really die run as ``fpgalab worker`` subprocesses (SIGKILL,
SIGSTOP); the others run in-process through the ``start_worker`` fixture.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.backends import Transaction, TransactResult
from fpgalab.service import keys
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from fpgalab.service.worker import BoardTaken, Worker
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    REPO,
    RedisServer,
    assert_error,
    board,
    job,
    register_lab,
    reserve,
    reset_to_idle,
    serve,
    submit,
    wait_for,
    wait_job,
    wait_set,
)

#: A run at this address is held in ``StallingBackend.transact`` until resumed.
STALL_ADDRESS = 0x7700


class StallingBackend(FakeBackend):
    """FakeBackend that holds every transact at ``STALL_ADDRESS`` (``held``, then waits for
    ``resume``): a run job that stays in flight, also in a worker subprocess
    (``--backend tests.test_worker:StallingBackend``), where no test can set ``hold``."""

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        if txn.address == STALL_ADDRESS:
            self.pause("transact")
        return super().transact(board, txn)


# -- worker subprocesses ----------------------------------------------------------------


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)


SpawnWorker = Callable[..., WorkerProc]


@pytest.fixture
def spawn_worker(redis_url: str, tmp_path: Path) -> Iterator[SpawnWorker]:
    """Start ``fpgalab worker`` subprocesses (heartbeat TTL 1 s); all killed at teardown."""
    procs: list[WorkerProc] = []

    def spawn(
        boards: str, backend: str = "tests.fakes:FakeBackend", url: str = redis_url, *more: str
    ) -> WorkerProc:
        log = tmp_path / f"worker-{len(procs)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FPGALAB_")}
        env.update(
            XDG_DATA_HOME=str(tmp_path / "xdg-data"),
            FPGALAB_WORKER_HEARTBEAT_TTL="1",
            FPGALAB_HOUSEKEEPING_INTERVAL="0.1",
            FPGALAB_HEALTH_INTERVAL="3600",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fpgalab.service.cli", "worker", "--boards", boards,
                 "--backend", backend, "--redis-url", url, *more],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        worker = WorkerProc(proc, log)
        procs.append(worker)
        return worker

    yield spawn
    for w in procs:
        if w.proc.poll() is None:
            w.proc.kill()  # also ends a SIGSTOPped one
        w.proc.wait(10)


async def lease_holder(store: Store, fpga_id: int) -> str | None:
    return await store.redis.get(keys.owner(fpga_id))  # type: ignore[no-any-return]


async def wait_serving(store: Store, w: WorkerProc, fpga_id: int) -> str:
    """Wait until the subprocess holds the board and has checked its health; its id."""

    async def ready() -> str | None:
        if w.proc.poll() is not None:
            raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.output()}")
        holder = await lease_holder(store, fpga_id)
        [(_, record, _)] = await store.boards([fpga_id])
        return holder if holder and record.get("health") == "good" else None

    return await wait_for(ready, timeout=20)  # type: ignore[no-any-return]


async def wait_lease_gone(store: Store, fpga_id: int) -> None:
    async def gone() -> bool:
        return await lease_holder(store, fpga_id) is None

    await wait_for(gone, timeout=10)


async def wait_running(client: httpx.AsyncClient, fpga_id: int, job_id: str) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        record = await job(client, fpga_id, job_id)
        assert record["status"] in ("queued", "running"), record
        return record if record["status"] == "running" else None

    return await wait_for(running)  # type: ignore[no-any-return]


async def logs(client: httpx.AsyncClient, fpga_id: int, job_id: str) -> str:
    r = await client.get(f"/fpga/{fpga_id}/jobs/{job_id}/logs")
    assert r.status_code == 200, r.text
    return r.text


# -- a worker that dies mid-job -----------------------------------------------------------


async def test_worker_killed_during_build_fails_the_job_and_errors_the_board(
    client: httpx.AsyncClient,
    store: Store,
    start_worker: WorkerFactory,
    spawn_worker: SpawnWorker,
) -> None:
    """A worker SIGKILLed mid-build is detected by another worker: the job fails naming
    it, the board goes to error with health unknown, and a reset brings it back."""
    await start_worker([0])  # a live worker elsewhere in the lab, doing housekeeping
    dead = spawn_worker("2")
    dead_id = await wait_serving(store, dead, 2)

    r = await submit(client, 2, "SLEEP=30\n")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    record = await wait_running(client, 2, job_id)

    async def building() -> bool:
        return "fake: elaborating" in await logs(client, 2, job_id)

    await wait_for(building)  # the backend is inside build()
    assert (await store.job(job_id))["worker"] == dead_id
    assert record["status"] == "running"
    dead.proc.kill()
    await dead.wait()
    assert (await board(client, 2))["state"] == "programming"

    failed = await wait_job(client, 2, job_id)
    assert failed["status"] == "failed"
    assert dead_id in failed["error"] and "lost" in failed["error"]
    b = await board(client, 2)
    assert b["state"] == "error" and b["health"] == "unknown", b
    assert b["current_job_id"] is None

    await wait_lease_gone(store, 2)
    await start_worker([2])
    b = await reset_to_idle(client, 2)
    assert b["health"] == "good"


async def test_worker_killed_during_run_fails_the_job_and_errors_the_board(
    client: httpx.AsyncClient,
    store: Store,
    start_worker: WorkerFactory,
    spawn_worker: SpawnWorker,
) -> None:
    """A worker SIGKILLed mid-run: the next worker on the board fails the run naming it,
    the board goes from reserved to error with health unknown, and a reset recovers it."""
    dead = spawn_worker("6", backend="tests.service.test_worker:StallingBackend")
    dead_id = await wait_serving(store, dead, 6)
    await reserve(client, 6)

    r = await client.post("/fpga/6/run", json={"op": 2, "address": STALL_ADDRESS})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    await wait_running(client, 6, job_id)
    assert (await store.job(job_id))["worker"] == dead_id
    dead.proc.kill()
    await dead.wait()
    assert (await board(client, 6))["state"] == "reserved"

    await wait_lease_gone(store, 6)
    await start_worker([6])  # takes the board over and sees the orphaned run
    failed = await wait_job(client, 6, job_id)
    assert failed["status"] == "failed"
    assert dead_id in failed["error"] and "lost" in failed["error"]
    b = await board(client, 6)
    assert b["state"] == "error" and b["health"] == "unknown", b
    result = (await client.get(f"/fpga/6/jobs/{job_id}/result")).json()
    assert result["ok"] is False and dead_id in result["error"]

    b = await reset_to_idle(client, 6)
    assert b["health"] == "good" and b["session"] is None


async def test_job_read_by_a_dead_worker_is_adopted_by_the_next(
    client: httpx.AsyncClient, store: Store, start_worker: WorkerFactory
) -> None:
    """A queued job delivered to a worker that died before taking it runs on the next
    worker for the board, and the entry is acknowledged once done."""
    await store.set_health(7, "check", "good", "")
    r = await submit(client, 7)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    # a worker that read the entry, then died before its take: the entry is pending
    await store.ensure_group(7)
    delivered = await store.redis.xreadgroup(
        keys.GROUP, "ghost-worker", {keys.queue(7): ">"}, count=1
    )
    assert [fields["job_id"] for _, entries in delivered for _, fields in entries] == [job_id]
    pending = await store.redis.xpending(keys.queue(7), keys.GROUP)
    assert pending["pending"] == 1
    assert (await job(client, 7, job_id))["status"] == "queued"

    heir = await start_worker([7])
    done = await wait_job(client, 7, job_id)
    assert done["status"] == "complete", done
    assert (await store.job(job_id))["worker"] == heir.id
    assert (await board(client, 7))["state"] == "reserved"
    assert (await store.redis.xpending(keys.queue(7), keys.GROUP))["pending"] == 0


# -- board leases -----------------------------------------------------------------------


async def test_second_worker_for_a_held_board_is_refused(
    settings: Settings,
    store: Store,
    start_worker: WorkerFactory,
    spawn_worker: SpawnWorker,
) -> None:
    """Worker.run() for a board a live worker holds raises BoardTaken naming the board
    and its holder, takes none of the boards it asked for, and the CLI exits 3."""
    holder = await start_worker([0, 1])
    rival_store = Store.from_url(settings.redis_url or "", settings)
    rival_backend = FakeBackend()
    try:
        rival = Worker(rival_store, rival_backend, [1, 5])
        with pytest.raises(BoardTaken) as caught:
            await rival.run()
    finally:
        rival_backend.close()
        await rival_store.close()
    message = str(caught.value)
    assert f"1 by {holder.id}" in message
    assert "5 by" not in message
    assert await lease_holder(store, 1) == holder.id
    assert await lease_holder(store, 5) is None  # released, free for another worker

    cli = spawn_worker("1")
    assert await cli.wait() == 3
    output = cli.output()
    assert holder.id in output and "1 by" in output
    assert await lease_holder(store, 1) == holder.id


async def test_workers_with_disjoint_boards_share_one_redis(
    client: httpx.AsyncClient, store: Store, start_worker: WorkerFactory
) -> None:
    """Two workers on disjoint boards of one Redis each run their own boards' jobs."""
    fake_a, fake_b = FakeBackend(), FakeBackend()
    try:
        a = await start_worker([0, 1], fake=fake_a)
        b = await start_worker([2, 3], fake=fake_b)
        assert a.id != b.id
        accepted = await asyncio.gather(reserve(client, 1), reserve(client, 2))
        job_1, job_2 = (x["job_id"] for x in accepted)
        assert (await store.job(job_1))["worker"] == a.id
        assert (await store.job(job_2))["worker"] == b.id
        assert ("program", 1) in fake_a.calls and ("program", 2) not in fake_a.calls
        assert ("program", 2) in fake_b.calls and ("program", 1) not in fake_b.calls
        assert (await board(client, 1))["worker"] == a.id
        assert (await board(client, 2))["worker"] == b.id
    finally:
        fake_a.close()
        fake_b.close()


async def test_a_worker_registers_its_boards_and_registers_them_again(
    client: httpx.AsyncClient, store: Store, spawn_worker: SpawnWorker, redis_url: str
) -> None:
    """``fpgalab worker --boards 12-13 --tags ...`` puts boards 12 and 13 in the lab, with
    platform ``sim`` and their tags, shown by GET /fpga; a Redis that lost them (restarted
    empty) has them back within a heartbeat."""
    w = spawn_worker("12-13", "tests.fakes:FakeBackend", redis_url, "--tags", "12=dsp,big;13=slow")
    await wait_serving(store, w, 13)
    listed = {b["fpga_id"]: b for b in (await client.get("/fpga")).json()}
    assert list(listed) == [*range(10), 12, 13]  # the test lab's ten, and these two
    assert (listed[12]["platform"], listed[12]["tags"]) == ("sim", ["big", "dsp"])
    assert (listed[13]["platform"], listed[13]["tags"]) == ("sim", ["slow"])
    assert (await client.get("/fpga/11")).status_code == 404
    await store.redis.flushall()

    async def back() -> bool:
        return (await client.get("/fpga/12")).status_code == 200

    await wait_for(back, timeout=5)
    assert (await client.get("/fpga/12")).json()["tags"] == ["big", "dsp"]
    assert [b["fpga_id"] for b in (await client.get("/fpga")).json()] == [12, 13]


async def test_a_worker_of_a_hundred_boards_serves_them_all(
    client: httpx.AsyncClient, store: Store, spawn_worker: SpawnWorker
) -> None:
    """``fpgalab worker --boards 100-199`` at the default FPGALAB_REDIS_MAX_CONNECTIONS
    (64): each board's blocking queue read holds a connection, and the worker opens
    enough for all of them; every board is leased and checked."""
    w = spawn_worker("100-199")

    async def all_served() -> bool:
        if w.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{w.output()}")
        rows = await store.boards(range(100, 200))
        return all(r.get("health") == "good" and holder for _, r, holder in rows)

    await wait_for(all_served, timeout=30)
    assert "No connection available" not in w.output()


async def test_expired_lease_lets_another_worker_take_the_board(
    client: httpx.AsyncClient,
    store: Store,
    start_worker: WorkerFactory,
    spawn_worker: SpawnWorker,
) -> None:
    """A frozen worker's lease lapses, another worker takes its board and runs its jobs;
    thawed, the first worker lets the board go and leaves the new lease alone."""
    old = spawn_worker("8")
    old_id = await wait_serving(store, old, 8)
    old.proc.send_signal(signal.SIGSTOP)

    async def lapsed() -> bool:
        # lease gone, and its last blocking queue read timed out in Redis (it could
        # otherwise still be handed an entry while frozen)
        info = await store.redis.info("clients")
        return await lease_holder(store, 8) is None and info["blocked_clients"] == 0

    await wait_for(lapsed)
    new = await start_worker([8])
    assert await lease_holder(store, 8) == new.id
    accepted = await reserve(client, 8)
    assert (await store.job(accepted["job_id"]))["worker"] == new.id

    old.proc.send_signal(signal.SIGCONT)

    async def let_go() -> bool:
        return f"board 8 is now held by {new.id}" in old.output()

    await wait_for(let_go)
    r = await client.post("/fpga/8/run", json={"op": 1, "address": 0, "data": [5]})
    assert r.status_code == 202, r.text
    done = await wait_job(client, 8, r.json()["job_id"])
    assert done["status"] == "complete"
    assert (await store.job(done["job_id"]))["worker"] == new.id

    old.proc.send_signal(signal.SIGTERM)
    assert await old.wait() == 0
    assert await lease_holder(store, 8) == new.id
    assert await store.redis.exists(keys.worker(old_id)) == 0


# -- Redis outages ----------------------------------------------------------------------


async def test_health_reports_redis_down_and_the_api_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    """With Redis down /health is 503 degraded and routes answer 503 redis_unavailable;
    once Redis is back on the same port the API answers again on its own."""
    server = RedisServer(tmp_path / "redis-down").start()
    register_lab(server.url)
    restarted: RedisServer | None = None
    try:
        async with serve(settings.model_copy(update={"redis_url": server.url})) as c:
            r = await c.get("/health")
            assert r.status_code == 200 and r.json()["redis"] is True

            server.stop()
            r = await c.get("/health")
            assert r.status_code == 503
            assert r.json() == {
                "status": "degraded",
                "redis": False,
                "memory": None,
                "warning": None,
                "boards": None,
            }
            replies = await asyncio.gather(
                c.get("/fpga"), c.get("/fpga/3"), submit(c, 3)
            )  # fmt: skip
            for reply in replies:
                assert_error(reply, 503, "redis_unavailable")

            restarted = RedisServer(server.folder, port=server.port).start()
            register_lab(restarted.url)  # empty: its workers register their boards again

            async def healthy() -> bool:
                return (await c.get("/health")).status_code == 200

            await wait_for(healthy)
            r = await c.get("/fpga")
            assert r.status_code == 200 and len(r.json()) == 10
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


async def test_worker_survives_a_redis_restart_without_losing_jobs(
    settings: Settings, tmp_path: Path, start_worker: WorkerFactory
) -> None:
    """Redis (AOF on) restarts, for longer than a heartbeat, while a run is in flight
    and two more are queued: all three complete, and the worker keeps serving."""
    folder = tmp_path / "redis-aof"
    server = RedisServer(folder, appendonly=True).start()
    restarted: RedisServer | None = None
    fake = StallingBackend()
    worker_settings = settings.model_copy(
        update={"redis_url": server.url, "worker_heartbeat_ttl": 0.5}
    )
    try:
        async with serve(worker_settings) as c:
            await start_worker([3], fake=fake, worker_settings=worker_settings)
            await reserve(c, 3)
            r1 = await c.post("/fpga/3/run", json={"op": 2, "address": STALL_ADDRESS})
            r2 = await c.post("/fpga/3/run", json={"op": 1, "address": 0x40, "data": [1, 2, 3]})
            r3 = await c.post("/fpga/3/run", json={"op": 2, "address": 0x40, "length": 3})
            ids = [r.json()["job_id"] for r in (r1, r2, r3)]
            await wait_running(c, 3, ids[0])
            await wait_set(fake.held)
            assert [(await job(c, 3, i))["status"] for i in ids[1:]] == ["queued", "queued"]

            server.stop()
            # down for longer than the worker's heartbeat lives
            await asyncio.sleep(worker_settings.worker_heartbeat_ttl + 0.2)
            restarted = RedisServer(folder, appendonly=True, port=server.port).start()

            async def healthy() -> bool:
                return (await c.get("/health")).status_code == 200

            await wait_for(healthy)
            fake.resume.set()
            done = [await wait_job(c, 3, i) for i in ids]
            assert [d["status"] for d in done] == ["complete"] * 3, done
            result = await c.get(f"/fpga/3/jobs/{ids[2]}/result")
            assert result.json()["data"] == [1, 2, 3]

            r4 = await c.post("/fpga/3/run", json={"op": 2, "address": 0x44})
            assert (await wait_job(c, 3, r4.json()["job_id"]))["status"] == "complete"
            res4 = await c.get(f"/fpga/3/jobs/{r4.json()['job_id']}/result")
            assert res4.json()["data"] == [2]
            assert (await board(c, 3))["state"] == "reserved"
    finally:
        fake.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


# -- boards in parallel, logs while running -----------------------------------------------


async def test_a_long_job_on_one_board_does_not_delay_another(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """While board 0's build is held at the gate, a build on board 1 completes."""
    slow = await submit(lab, 0, "GATE\n")
    assert slow.status_code == 202, slow.text
    try:
        await wait_set(backend.gate_reached)
        fast = await submit(lab, 1)
        done = await wait_job(lab, 1, fast.json()["job_id"])
        assert done["status"] == "complete"
        assert (await board(lab, 1))["state"] == "reserved"
        assert (await board(lab, 0))["state"] == "programming"
        assert (await job(lab, 0, slow.json()["job_id"]))["status"] == "running"
    finally:
        backend.release_gate()
    assert (await wait_job(lab, 0, slow.json()["job_id"]))["status"] == "complete"


async def test_logs_stream_while_the_job_runs(lab: httpx.AsyncClient, backend: FakeBackend) -> None:
    """A running build's log already holds its first lines before the build ends."""
    r = await submit(lab, 5, "GATE\n")
    job_id = r.json()["job_id"]
    try:
        await wait_set(backend.gate_reached)

        async def first_lines() -> str | None:
            text = await logs(lab, 5, job_id)
            return text if "fake: elaborating design.py" in text else None

        early = await wait_for(first_lines)
        assert "fpgalab: building design.py" in early
        assert "fake: verilating" not in early  # still held at the gate
        assert (await job(lab, 5, job_id))["status"] == "running"
    finally:
        backend.release_gate()
    assert (await wait_job(lab, 5, job_id))["status"] == "complete"
    final = await logs(lab, 5, job_id)
    assert final.startswith(early)
    assert final.index("fake: elaborating") < final.index("fake: verilating")


async def test_a_worker_that_lost_its_lease_leaves_the_job_for_the_new_holder(
    client: httpx.AsyncClient, store: Store
) -> None:
    """A take by a worker whose board lease another worker now holds is refused and
    leaves the job queued and its entry pending; a merely lapsed lease is renewed."""
    from fpgalab.service.store import LeaseLost

    await store.set_health(4, "check", "good", "")
    r = await client.post("/fpga/4/submit", files={"file": ("d.py", b"Design = None\n")})
    job_id = r.json()["job_id"]
    await store.ensure_group(4)
    [(entry, read_id)] = await store.next_entries(4, "stale-worker", 100)
    assert read_id == job_id
    await store.redis.set(keys.owner(4), "new-holder", px=60_000)
    with pytest.raises(LeaseLost):
        await store.take(4, job_id, "stale-worker", entry)
    assert (await job(client, 4, job_id))["status"] == "queued"
    # the entry is still pending, so the new holder adopts it
    assert await store.adopt_pending(4, "new-holder") == 1
    [(adopted, _)] = await store.next_entries(4, "new-holder", 0, pending=True)
    assert adopted == entry
    # with the lease lapsed and nobody else holding it, a take renews it and runs
    await store.redis.delete(keys.owner(4))
    assert await store.take(4, job_id, "new-holder", entry) is not None
    assert await store.redis.get(keys.owner(4)) == "new-holder"
