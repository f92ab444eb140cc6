"""Fault injection into real processes, each fault's end checked against the table in
docs/operations.md ("Faults: what you see, what heals itself"):

- a worker process SIGKILLed while a build, a program, a run or a reset is held in
  its backend (``FileHeldFakeBackend``, steered through files); a new worker takes over;
- a worker's take that went through in Redis but whose answer the worker never got;
- Redis (AOF on) stopped, or killed, and started again while jobs are queued and
  running, under a real ``fpgalab api`` and two worker processes;
- the API (``fpgalab api``) stopped, or killed, and started again while a worker runs.

Every test ends by checking that nothing was lost: each job it created is in Redis, in
a final status. A simulated board killed mid-transfer: ``tests/backends/test_sim_faults.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fpgalab.service import keys
from fpgalab.service.cli import backend_options
from fpgalab.service.settings import Settings
from fpgalab.service.store import LeaseLost, Store
from tests.conftest import WorkerFactory
from tests.fakes import HELD_FILE, HOLD_FILE, RESUME_FILE, FakeBackend
from tests.helpers import (
    FINISHED,
    CliProcess,
    RedisServer,
    assert_error,
    board,
    free_port,
    job,
    jobs_in_redis,
    reserve,
    submit,
    wait_for,
    wait_http,
    wait_job,
    wait_set,
)

pytestmark = pytest.mark.timeout(60)

BACKEND = "tests.fakes:FileHeldFakeBackend"
#: Heartbeat and lease lifetime of the worker processes (seconds): a dead one is seen fast.
TTL = 1.0
#: A finished-or-lost job that an outage made wait: generous on a loaded machine.
JOB_TIMEOUT = 20.0


# -- processes ----------------------------------------------------------------------------


@dataclass
class HeldWorker:
    """A ``fpgalab worker`` process whose backend calls the test holds through files."""

    process: CliProcess
    folder: Path

    def hold(self, *calls: str) -> None:
        """Hold these calls (``build``, ``program 2``, ``transact 1``, ...) from now on."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / HOLD_FILE).write_text("\n".join(calls) + "\n")

    def resume(self) -> None:
        """Let the held call, and every later one, go on."""
        (self.folder / RESUME_FILE).touch()

    async def wait_held(self, call: str) -> None:
        """Wait until the backend holds ``call`` (``op board``; a build: ``build -``)."""

        async def held() -> bool:
            if not self.process.running():
                raise AssertionError(f"worker exited:\n{self.process.output()}")
            path = self.folder / HELD_FILE
            return path.exists() and path.read_text() == call

        await wait_for(held, timeout=JOB_TIMEOUT)


StartProcess = Callable[..., CliProcess]
SpawnWorker = Callable[..., HeldWorker]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[StartProcess]:
    """Start ``fpgalab`` processes; every one still running is killed at teardown."""
    started: list[CliProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CliProcess:
        process = CliProcess(args, tmp_path / f"{args[0]}-{len(started)}.log", env)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def spawn_worker(processes: StartProcess, tmp_path: Path) -> SpawnWorker:
    """Start ``fpgalab worker --boards BOARDS`` on ``FileHeldFakeBackend`` against a Redis
    URL, with a heartbeat of ``ttl`` and a data folder of its own (where its hold files are)."""
    count = itertools.count()

    def spawn(boards: str, redis_url: str, ttl: float = TTL) -> HeldWorker:
        data_dir = tmp_path / f"worker-{next(count)}"
        env = {
            "FPGALAB_DATA_DIR": str(data_dir),
            "FPGALAB_WORKER_HEARTBEAT_TTL": str(ttl),
            "FPGALAB_HOUSEKEEPING_INTERVAL": "0.1",
            "FPGALAB_HEALTH_INTERVAL": "3600",
        }
        process = processes(
            "worker", "--boards", boards, "--backend", BACKEND, "--redis-url", redis_url, env=env
        )
        options = backend_options(Settings(data_dir=data_dir, backend=BACKEND, lab_file=None))
        return HeldWorker(process, Path(str(options["data_dir"])))

    return spawn


async def wait_serving(store: Store, worker: HeldWorker, boards: list[int]) -> str:
    """Wait until the worker holds every one of ``boards`` and has checked them; its id."""

    async def ready() -> str | None:
        if not worker.process.running():
            raise AssertionError(f"worker exited:\n{worker.process.output()}")
        rows = await store.boards(boards)
        holders = {holder for _, record, holder in rows if record.get("health") == "good"}
        if len(holders) == 1 and sum(1 for *_, h in rows if h) == len(boards):
            return holders.pop()
        return None

    return await wait_for(ready, timeout=JOB_TIMEOUT)  # type: ignore[no-any-return]


async def wait_holder(store: Store, boards: list[int], worker: HeldWorker) -> str:
    """Wait until one worker, the process ``worker``, holds all of ``boards``; its id."""

    async def held() -> str | None:
        if not worker.process.running():
            raise AssertionError(f"worker exited:\n{worker.process.output()}")
        holders = {await store.redis.get(keys.owner(b)) for b in boards}
        if len(holders) != 1 or None in holders:
            return None
        holder = str(holders.pop())
        return holder if f"worker {holder} serving boards" in worker.process.output() else None

    return await wait_for(held, timeout=JOB_TIMEOUT)  # type: ignore[no-any-return]


async def wait_logged(process: CliProcess, *texts: str) -> None:
    """Wait until the process has logged one of ``texts``."""

    async def logged() -> bool:
        if not process.running():
            raise AssertionError(f"{process.args} exited:\n{process.output()}")
        return any(text in process.output() for text in texts)

    await wait_for(logged, timeout=JOB_TIMEOUT)


async def start_api(processes: StartProcess, redis_url: str, port: int) -> CliProcess:
    api = processes("api", "--redis-url", redis_url, "--port", str(port))
    await wait_http(f"http://127.0.0.1:{port}/health", proc=api)
    return api


async def post_run(c: httpx.AsyncClient, fpga_id: int, body: dict[str, Any], **kw: Any) -> str:
    r = await c.post(f"/fpga/{fpga_id}/run", json=body, **kw)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def result(c: httpx.AsyncClient, fpga_id: int, job_id: str) -> dict[str, Any]:
    r = await c.get(f"/fpga/{fpga_id}/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def logs(c: httpx.AsyncClient, fpga_id: int, job_id: str) -> str:
    r = await c.get(f"/fpga/{fpga_id}/jobs/{job_id}/logs")
    assert r.status_code == 200, r.text
    return r.text


async def assert_nothing_lost(store: Store, created: set[str]) -> None:
    """Every job created is still in Redis, in a final status, and there are no others."""
    records = {r["job_id"]: r for r in await jobs_in_redis(store)}
    assert set(records) == created
    unfinished = {i: r["status"] for i, r in records.items() if r["status"] not in FINISHED}
    assert not unfinished, unfinished


# -- a worker killed mid-job ----------------------------------------------------------------

#: stage -> (the backend call held, the board's state while it is held, a log line of the
#: job written before the hold)
STAGES = {
    "build": ("build -", "programming", "fake: build of design.py started"),
    "program": ("program 2", "programming", "fpgalab: programming board 2"),
    "run": ("transact 2", "reserved", None),
    "reset": ("reset 2", "resetting", "fpgalab: resetting board 2 to the base SoC"),
}


@pytest.mark.parametrize("stage", list(STAGES))
async def test_worker_killed_mid_job_fails_that_job_and_the_next_worker_runs_the_rest(
    stage: str,
    client: httpx.AsyncClient,
    store: Store,
    redis_url: str,
    spawn_worker: SpawnWorker,
) -> None:
    """A worker SIGKILLed during a build, program, run or reset: its successor fails that job
    as lost (board error, health unknown), fails the runs queued behind it naming the state,
    runs the job queued meanwhile on the dead worker's other board, and a reset heals."""
    call, held_state, log_line = STAGES[stage]
    dead = spawn_worker("2,3", redis_url)
    dead_id = await wait_serving(store, dead, [2, 3])
    created: set[str] = set()
    if stage in ("run", "reset"):
        created.add((await reserve(client, 2))["job_id"])

    dead.hold(call)
    if stage in ("build", "program"):
        r = await submit(client, 2)
    elif stage == "run":
        r = await client.post("/fpga/2/run", json={"op": 1, "address": 0x10, "data": [7]})
    else:
        r = await client.post("/fpga/2/reset")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    behind = []
    if stage == "run":  # only a run can have jobs queued behind it on its board
        behind = [await post_run(client, 2, {"op": 2, "address": a}) for a in (0x10, 0x14)]
    created.update([job_id, *behind])
    await dead.wait_held(call)
    if log_line is not None:  # lines reach Redis every 0.1 s: these have, the kill comes after

        async def logged() -> bool:
            return log_line in await logs(client, 2, job_id)

        await wait_for(logged)
    assert (await job(client, 2, job_id))["status"] == "running"
    assert (await store.job(job_id))["worker"] == dead_id
    held = await board(client, 2)
    assert (held["state"], held["current_job_id"]) == (held_state, job_id), held

    # its successor, started as a supervisor restarts a worker: it finds the boards held
    # and waits for their leases to lapse (its longer heartbeat: more patience than needed)
    heir = spawn_worker("2,3", redis_url, ttl=3 * TTL)
    await wait_logged(heir.process, "waiting up to")
    dead.process.signal(signal.SIGKILL)
    assert await dead.process.wait() == -signal.SIGKILL
    r = await submit(client, 3)  # a job for the dead worker's other board
    assert r.status_code == 202, r.text
    queued_id = r.json()["job_id"]
    created.add(queued_id)
    heir_id = await wait_holder(store, [2, 3], heir)
    assert heir_id != dead_id

    message = f"worker {dead_id} was lost while running this job"
    lost = await wait_job(client, 2, job_id)
    assert (lost["status"], lost["error"]) == ("failed", message), lost
    b = await board(client, 2)
    assert (b["state"], b["health"], b["health_reason"]) == ("error", "unknown", message), b
    assert b["current_job_id"] is None and b["worker"] == heir_id
    # the session survives everything but the reset, which had closed it already
    assert (b["session"] is None) == (stage == "reset"), b
    if log_line is not None:
        assert log_line in await logs(client, 2, job_id)
    if stage == "run":
        assert await result(client, 2, job_id) == {"ok": False, "data": [], "error": message}
    for behind_id in behind:
        failed = await wait_job(client, 2, behind_id)
        assert failed["status"] == "failed", failed
        assert failed["error"] == "FPGA 2 is error and can no longer run this job."
    assert_error(await submit(client, 2), 409, "fpga_not_idle")

    done = await wait_job(client, 3, queued_id)
    assert done["status"] == "complete", done
    assert (await store.job(queued_id))["worker"] == heir_id
    assert (await board(client, 3))["state"] == "reserved"

    r = await client.post("/fpga/2/reset")  # what the table says the board needs
    assert r.status_code == 202, r.text
    created.add(r.json()["job_id"])
    assert (await wait_job(client, 2, r.json()["job_id"]))["status"] == "complete"
    after = await board(client, 2)
    assert (after["state"], after["health"], after["session"]) == ("idle", "good", None), after
    created.add((await reserve(client, 2))["job_id"])
    await assert_nothing_lost(store, created)


@dataclass
class LostTake:
    """Board 4 reserved; a write run held in the backend, and a read queued behind it
    that the test took for the worker, as its own take would: the take went through and
    the worker never heard of it (as if the connection broke before the answer)."""

    created: set[str]
    write: str
    read: str
    entry: str


async def lose_a_take(
    client: httpx.AsyncClient, store: Store, worker_id: str, backend: FakeBackend
) -> LostTake:
    created = {(await reserve(client, 4))["job_id"]}
    backend.hold.add("transact")
    write = await post_run(client, 4, {"op": 1, "address": 0x10, "data": [1]})
    await wait_set(backend.held)  # the worker is busy: the next entry waits in the queue
    read = await post_run(client, 4, {"op": 2, "address": 0x10})
    created.update([write, read])
    [(entry, read_id)] = await store.next_entries(4, worker_id, 100)
    assert read_id == read
    assert await store.take(4, read, worker_id, entry) is not None
    assert (await job(client, 4, read))["status"] == "running"
    return LostTake(created, write, read, entry)


async def test_a_take_whose_answer_redis_lost_is_taken_again_and_run(
    client: httpx.AsyncClient, store: Store, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A job a worker's take marked running, but whose answer the worker never got (the
    connection failed just then), is taken again by that worker when it reads its
    pending entries again, and runs: neither failed nor left running for ever."""
    worker = await start_worker([4])
    lost = await lose_a_take(client, store, worker.id, backend)
    with pytest.raises(LeaseLost):  # nobody else may take it: the board is this worker's
        await store.take(4, lost.read, "somebody-else", lost.entry)
    backend.hold.discard("transact")
    backend.resume.set()

    assert (await wait_job(client, 4, lost.write))["status"] == "complete"
    done = await wait_job(client, 4, lost.read)
    assert (done["status"], done["error"]) == ("complete", None), done
    assert (await store.job(lost.read))["worker"] == worker.id
    assert (await result(client, 4, lost.read))["data"] == [1]
    assert (await board(client, 4))["state"] == "reserved"
    await assert_nothing_lost(store, lost.created)


async def test_a_take_whose_answer_redis_lost_and_is_never_taken_again_fails_as_lost(
    client: httpx.AsyncClient, store: Store, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """If the worker does not take such a job again within 3 heartbeat TTLs (here: the
    entry is gone from its pending list), its housekeeping fails it as lost rather than
    leave it running for ever; the board goes to error, and a reset heals it."""
    worker = await start_worker([4])
    lost = await lose_a_take(client, store, worker.id, backend)
    await store.redis.xack(keys.queue(4), keys.GROUP, lost.entry)  # nothing left to read again
    backend.resume.set()

    assert (await wait_job(client, 4, lost.write))["status"] == "complete"
    failed = await wait_job(client, 4, lost.read, timeout=JOB_TIMEOUT)
    message = f"worker {worker.id} lost this job: Redis failed as it was taken"
    assert (failed["status"], failed["error"]) == ("failed", message), failed
    b = await board(client, 4)
    assert (b["state"], b["health"], b["health_reason"]) == ("error", "unknown", message), b
    r = await client.post("/fpga/4/reset")
    assert r.status_code == 202, r.text
    lost.created.add(r.json()["job_id"])
    assert (await wait_job(client, 4, r.json()["job_id"]))["status"] == "complete"
    assert (await board(client, 4))["state"] == "idle"
    await assert_nothing_lost(store, lost.created)


# -- Redis restarted --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_redis_restart_loses_no_job_and_everything_reconnects_by_itself(
    how: str, tmp_path: Path, processes: StartProcess, spawn_worker: SpawnWorker
) -> None:
    """Redis (AOF on) stopped or killed, for longer than a heartbeat, while runs are running
    and queued on two worker processes: /health is 503 meanwhile and 200 again by itself,
    the run that ended during the outage and every queued run complete, and both workers
    serve their boards again, none of them judged lost."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    restarted: RedisServer | None = None
    store = Store.from_url(server.url, Settings(redis_url=server.url))
    port = free_port()
    try:
        api = await start_api(processes, server.url, port)
        workers = {1: spawn_worker("1", server.url), 2: spawn_worker("2", server.url)}
        ids = {b: await wait_serving(store, w, [b]) for b, w in workers.items()}
        created: set[str] = set()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False
        ) as c:
            runs: dict[int, list[str]] = {}
            for b, w in workers.items():
                created.add((await reserve(c, b))["job_id"])
                w.hold(f"transact {b}")
                runs[b] = [
                    await post_run(c, b, {"op": 1, "address": 0x40, "data": [b, 2, 3]}),
                    await post_run(c, b, {"op": 2, "address": 0x40, "length": 3}),
                    await post_run(c, b, {"op": 1, "address": 0x80, "data": [b]}),
                ]
                created.update(runs[b])
                await w.wait_held(f"transact {b}")
            for b in workers:
                statuses = [(await job(c, b, i))["status"] for i in runs[b]]
                assert statuses == ["running", "queued", "queued"], statuses

            if how == "killed":
                server.kill()
            else:
                server.stop()
            r = await c.get("/health")
            assert r.status_code == 503
            assert {"status": "degraded", "redis": False}.items() <= r.json().items()
            assert_error(await c.get("/fpga/1"), 503, "redis_unavailable")
            workers[1].resume()  # board 1's run ends while Redis is away
            await asyncio.sleep(TTL + 0.5)  # every heartbeat and lease lapses
            assert api.running() and all(w.process.running() for w in workers.values())
            restarted = RedisServer(server.folder, appendonly=True, port=server.port).start()
            # The API reconnects by itself: its connections sat idle through the outage,
            # yet the first requests once Redis answers are answered.
            r = await c.get("/health")
            assert r.status_code == 200 and r.json()["redis"] is True, r.text
            assert (await c.get("/fpga/1")).status_code == 200
            workers[2].resume()  # board 2's run ends after the outage
            for b in workers:
                done = [await wait_job(c, b, i, timeout=JOB_TIMEOUT) for i in runs[b]]
                assert [d["status"] for d in done] == ["complete"] * 3, [
                    (d["status"], d["error"]) for d in done
                ]
                assert (await result(c, b, runs[b][1]))["data"] == [b, 2, 3]
                assert {(await store.job(i))["worker"] for i in runs[b]} == {ids[b]}

            # both workers are back by themselves: they hold their boards and take new jobs
            for b, w in workers.items():
                assert await wait_serving(store, w, [b]) == ids[b]
                again = await post_run(c, b, {"op": 2, "address": 0x80})
                created.add(again)
                assert (await wait_job(c, b, again))["status"] == "complete"
                assert (await result(c, b, again))["data"] == [b]
                row = await board(c, b)
                assert (row["state"], row["health"], row["worker"]) == ("reserved", "good", ids[b])
            for w in workers.values():
                assert "was lost" not in w.process.output()
        await assert_nothing_lost(store, created)
    finally:
        await store.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.parametrize("held", ["program", "reset"])
async def test_a_job_that_needs_redis_in_its_middle_waits_out_an_outage(
    held: str, tmp_path: Path, processes: StartProcess, spawn_worker: SpawnWorker
) -> None:
    """A program and a reset publish the board's memory map once the board is loaded:
    Redis away at that moment delays the job, it does not fail it."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    restarted: RedisServer | None = None
    store = Store.from_url(server.url, Settings(redis_url=server.url))
    port = free_port()
    try:
        await start_api(processes, server.url, port)
        worker = spawn_worker("3", server.url)
        await wait_serving(store, worker, [3])
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False
        ) as c:
            created: set[str] = set()
            if held == "reset":
                created.add((await reserve(c, 3))["job_id"])
            worker.hold(f"{held} 3")
            r = await (c.post("/fpga/3/reset") if held == "reset" else submit(c, 3))
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            created.add(job_id)
            await worker.wait_held(f"{held} 3")

            server.stop()
            worker.resume()  # the board is loaded; the map cannot be published
            # the worker meets the outage: it waits (or, were it careless, fails the job)
            await wait_logged(worker.process, "Redis is away", "crashed the worker's handler")
            restarted = RedisServer(server.folder, appendonly=True, port=server.port).start()

            done = await wait_job(c, 3, job_id, timeout=JOB_TIMEOUT)
            assert (done["status"], done["error"]) == ("complete", None), done
            row = await board(c, 3)
            state = "idle" if held == "reset" else "reserved"
            assert (row["state"], row["health"]) == (state, "good"), row
            assert (await c.get("/fpga/3/memory-map")).status_code == 200
        await assert_nothing_lost(store, created)
    finally:
        await store.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


#: How long the stalled Redis stays stopped: longer than a call's deadline (2 s), and
#: than the workers' heartbeats.
STALL = 5.0
#: What a call may take beyond its Redis deadline on a loaded machine (seconds).
MARGIN = 1.5


async def timed(call: Any) -> tuple[httpx.Response, float]:
    """The response of ``call`` (a coroutine) and the seconds it took."""
    started = asyncio.get_running_loop().time()
    response = await call
    return response, asyncio.get_running_loop().time() - started


async def test_a_stalled_redis_is_a_prompt_503_and_everything_works_again_after_it(
    tmp_path: Path, processes: StartProcess, spawn_worker: SpawnWorker
) -> None:
    """Redis stalled (SIGSTOP, not down) for longer than a call's deadline: a read, a run
    and /health each answer 503 within FPGALAB_REDIS_TIMEOUT (2 s) and a margin, not when
    Redis resumes; after SIGCONT every route answers again and the worker runs jobs."""
    server = RedisServer(tmp_path / "redis").start()
    store = Store.from_url(server.url, Settings(redis_url=server.url))
    port = free_port()
    deadline = 2.0  # FPGALAB_REDIS_TIMEOUT's default
    try:
        await start_api(processes, server.url, port)
        worker = spawn_worker("3", server.url)
        await wait_serving(store, worker, [3])
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=3 * STALL, trust_env=False
        ) as c:
            await reserve(c, 3)
            assert (await c.get("/fpga/3")).status_code == 200  # a pooled connection, in use

            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            stopped = asyncio.get_running_loop().time()
            try:
                r, took = await timed(c.get("/fpga/3"))
                assert_error(r, 503, "redis_unavailable")
                assert r.headers["Retry-After"] == "1"
                assert took < deadline + MARGIN, took
                r, took = await timed(c.post("/fpga/3/run", json={"op": 2, "address": 0}))
                assert_error(r, 503, "redis_unavailable")
                assert took < deadline + MARGIN, took
                r, took = await timed(c.get("/health"))
                assert r.status_code == 503 and r.json()["redis"] is False, r.text
                assert took < deadline + MARGIN, took
                await asyncio.sleep(max(0.0, stopped + STALL - asyncio.get_running_loop().time()))
            finally:
                server.proc.send_signal(signal.SIGCONT)

            r = await c.get("/health")
            assert r.status_code == 200 and r.json()["redis"] is True, r.text
            b = await board(c, 3)
            assert (b["state"], b["health"]) == ("reserved", "good")
            run = await post_run(c, 3, {"op": 1, "address": 0x40, "data": [7]})
            assert (await wait_job(c, 3, run, timeout=JOB_TIMEOUT))["status"] == "complete"
            await wait_serving(store, worker, [3])
    finally:
        await store.close()
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
        server.stop()


async def test_a_worker_started_before_redis_waits_for_it(
    tmp_path: Path, spawn_worker: SpawnWorker
) -> None:
    """A worker that cannot reach Redis as it starts (a lab host booted first, or Redis
    restarting just then) waits for it, saying so, and serves its boards once it answers."""
    server = RedisServer(tmp_path / "redis", appendonly=True)  # not started yet
    worker = spawn_worker("4", server.url)
    await wait_logged(worker.process, "Redis does not answer")
    server.start()
    store = Store.from_url(server.url, Settings(redis_url=server.url))
    try:
        await wait_serving(store, worker, [4])
    finally:
        await store.close()
        server.stop()


# -- the API restarted ------------------------------------------------------------------


@dataclass
class Poller:
    """A client polling one job over its own connections, recording what it got: a job
    status per answer, or the name of the transport error."""

    url: str
    seen: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=2, trust_env=False) as c:
            while not stop.is_set():
                try:
                    r = await c.get(self.url)
                except httpx.TransportError as exc:
                    self.seen.append(type(exc).__name__)
                else:
                    assert r.status_code == 200, r.text  # never a 5xx, never a wrong answer
                    self.seen.append(r.json()["status"])
                await asyncio.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_api_restart_while_a_worker_runs_loses_nothing(
    sig: signal.Signals,
    redis_url: str,
    store: Store,
    processes: StartProcess,
    spawn_worker: SpawnWorker,
) -> None:
    """The API stopped or killed while a worker process runs jobs: the jobs complete
    meanwhile, a polling client gets connection errors and then the right answers, and a
    client retrying a request with its Idempotency-Key gets the job it already has."""
    port = free_port()
    api = await start_api(processes, redis_url, port)
    worker = spawn_worker("0,1", redis_url)
    worker_id = await wait_serving(store, worker, [0, 1])
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False
    ) as c:
        created = {(await reserve(c, 0))["job_id"]}
        worker.hold("transact 0", "build")
        key = {"Idempotency-Key": "write-once"}
        write_body = {"op": 1, "address": 0x20, "data": [5, 6]}
        write = await post_run(c, 0, write_body, headers=key)
        await worker.wait_held("transact 0")
        read = await post_run(c, 0, {"op": 2, "address": 0x20, "length": 2})
        r = await submit(c, 1)
        assert r.status_code == 202, r.text
        build = r.json()["job_id"]
        await worker.wait_held("build -")
        created.update([write, read, build])

        poller = Poller(f"http://127.0.0.1:{port}/fpga/0/jobs/{read}")
        stop = asyncio.Event()
        polling = asyncio.create_task(poller.run(stop))

        async def polled() -> bool:
            return bool(poller.seen)

        await wait_for(polled)
        api.signal(sig)
        assert await api.wait() == (0 if sig is signal.SIGTERM else -signal.SIGKILL)

        async def refused() -> bool:
            return bool(poller.seen) and poller.seen[-1] not in ("queued", "running")

        await wait_for(refused)
        worker.resume()

        async def all_done() -> bool:  # in Redis: the worker carries on without the API
            return all([(await store.job(i))["status"] == "complete" for i in created])

        await wait_for(all_done, timeout=JOB_TIMEOUT)
        api = await start_api(processes, redis_url, port)

        async def answered() -> bool:
            return poller.seen[-1] == "complete"

        await wait_for(answered)
        stop.set()
        await polling

        # polled answers only move forward; errors only while the API was away, in one stretch
        order = ["queued", "running", "complete"]
        answers = [s for s in poller.seen if s in order]
        assert answers == sorted(answers, key=order.index), poller.seen
        kinds = ["ok" if s in order else "error" for s in poller.seen]
        stretches = [k for k, _ in itertools.groupby(kinds)]
        assert stretches == ["ok", "error", "ok"], poller.seen

        assert (await result(c, 0, read))["data"] == [5, 6]
        assert (await job(c, 1, build))["status"] == "complete"
        assert "fake: verilating" in await logs(c, 1, build)
        assert (await board(c, 1))["state"] == "reserved"
        retried = await c.post("/fpga/0/run", json=write_body, headers=key)
        assert retried.status_code == 202, retried.text
        assert (retried.json()["job_id"], retried.json()["replayed"]) == (write, True)
        for b in (0, 1):
            assert (await board(c, b))["worker"] == worker_id
    assert worker.process.running()
    await assert_nothing_lost(store, created)
