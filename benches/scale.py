"""Pools at scale: a lab of many boards on one Redis beside a lab of ten, in one run.

    python benches/scale.py [--seconds 5] [--boards 1000] [--keep-logs DIR] [--json FILE]
    (or: nox -s bench; about 4-5 minutes on 2 cores)

Two labs, one after the other (``--base-boards``, 10, then ``--boards``, 1,000), each of
its own processes: a private ``redis-server`` (AOF on, as ``fpgalab serve`` starts it);
the workers, ``--per-worker`` boards each (1 x 10, then 10 x 100), each a ``Worker`` on
benches/api.py's ``InstantBackend`` (every build, program and reset returns at once)
with the store ``fpgalab worker`` makes and ``--per-worker`` + 16 Redis connections, its
boards registered as ``sim`` with tags (every other board ``dsp``, every fourth ``dsp``
and ``big``); the lab API (``create_app``, one uvicorn worker, an open lab); a bare
FastAPI app (a JSON list, and a multipart upload parsed as ``POST /submit`` parses it);
and for each row a load process (asyncio, a ``Store`` of its own) that reads the event
log to release each board whose build is done, as ``POST /fpga/{id}/session/release``
does, and samples the workers' heartbeat and lease TTLs. Once every board is registered
and its health ``good``, in each lab:

- Redis memory (``used_memory``) empty, then with the lab idle: bytes per board; its
  commands/s and CPU with the lab idle (the workers' own reads, heartbeats, checks:
  per-job figures are also given net of this floor);
- ``GET /fpga`` req/s and p50/p99 (api.py's load generator), Redis's and the API's CPU
  per request;
- submit -> start: pool jobs at ``--rate``/s onto idle boards (each released once
  built), from the job's ``created_at`` (the submit script's Redis ``TIME``) to its
  ``started_at`` (the worker's take, the same clock), of those placed at once; and the
  Redis commands of 2 ms or more meanwhile (the slow log);
- placements/s onto idle boards, one job per board sent at once by ``--concurrency``
  coroutines: pool submits beside named-board submits (``Store.submit``) and beside a
  script that does nothing, called with the same arguments (the round trip alone);
- sustained placements/s with every board cycling (placed, built, released, reset,
  placed again) for ``--seconds`` after ``--warmup``: pool jobs through the store, a
  backlog of ``--backlog`` kept waiting in three pools (any sim board, ``dsp``,
  ``big,dsp``), beside named-board submits (each board submitted to again as it comes
  back idle); then the same pool load through ``POST /submit`` beside the bare multipart
  POST. Per placed job (one cycle of a board): Redis commands (``INFO stats``, those in
  scripts included), Redis CPU (``INFO cpu``), each process's CPU (``/proc``); then 1 s
  more with every command in the slow log: Redis's time by script; and how long the lab
  takes to be idle again once the load stops;
- ``GET /jobs/{id}`` of a pool job;
- memory per retained job: ``used_memory`` once the lab is quiet again, less that of
  the idle lab and of the two capped streams (event log, audit), over the job records
  kept (``job_retention``: every build and reset job of the run).

Then one worker of ``--per-worker`` boards alone at the default
``redis_max_connections``: its leases and heartbeat after a heartbeat TTL. Last, the
aims of the issue, each met or not: >= 2,000 placements/s sustained, p99 submit -> start
<= 20 ms with idle boards, memory and Redis work per job flat from the small lab to the
big one (at most x1.25). Every process it starts is stopped before it exits (SIGTERM
too). Figures on a shared machine move from run to run: the report shows its load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (REPO, HERE):  # run as a script from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import api  # noqa: E402
from api import HOST, HttpConnection, percentile  # noqa: E402
from fastapi import File, Form, UploadFile  # noqa: E402

from fpgalab.service import keys  # noqa: E402

#: The aims of the issue.
AIM_PLACEMENTS = 2000.0
AIM_P99_MS = 20.0
#: Growth from the small lab to the big one still called flat (the issue says "flat").
FLAT = 1.25
#: What the load asks for, each with its share of the backlog, as the boards are split:
#: every other board plain (only ``sim|`` fits it), a quarter ``dsp``, a quarter both.
POOLS = {"sim|": 0.5, "sim|dsp": 0.25, "sim|big,dsp": 0.25}
#: Queue limits of the load's callers: far above what the bench keeps waiting.
QUEUE_LIMIT = 1_000_000
#: Redis commands at least this long (us) are listed as stalls in the submit -> start row.
STALL_US = 2000
#: Longest wait for an HTTP answer (s): a request that takes longer fails the row.
HTTP_TIMEOUT = 30.0
#: Connections a worker gets beyond one per board (its heartbeat, housekeeping, takes).
SPARE_CONNECTIONS = 16
DESIGN = api.DESIGN.decode()
DESIGN_SHA = hashlib.sha256(api.DESIGN).hexdigest()
FORM_TYPE = f"multipart/form-data; boundary={api.BOUNDARY}"


def tags_of(board: int) -> tuple[str, ...]:
    if board % 4 == 0:
        return ("big", "dsp")
    if board % 2 == 0:
        return ("dsp",)
    return ()


def form(req: str) -> bytes:
    """The ``POST /submit`` body of a pool job for requirement ``req``."""
    platform, _, tags = req.partition("|")
    end = f"--{api.BOUNDARY}--\r\n".encode()
    body = api.multipart("design.py", api.DESIGN).removesuffix(end)
    for name, value in (("platform", platform), ("tags", tags)):
        body += (f'--{api.BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                 f"{value}\r\n").encode()  # fmt: skip
    return body + end


def default_connections() -> int:
    from fpgalab.service.settings import Settings

    return int(Settings.model_fields["redis_max_connections"].default)


# -- the served processes -------------------------------------------------------------------


def role_worker(args: argparse.Namespace) -> None:
    """Boards ``--first`` .. ``--first + --count - 1``, as ``fpgalab worker`` serves them,
    with ``--connections`` Redis connections at most (0: the setting's default)."""
    from fpgalab.service.settings import Settings
    from fpgalab.service.worker import BLOCK_MS

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings(redis_url=args.redis_url, worker_stop_grace=2)
    if args.connections:
        settings = settings.model_copy(update={"redis_max_connections": args.connections})
    boards = list(range(args.first, args.first + args.count))
    inventory = {b: ("sim", tags_of(b)) for b in boards}

    api.serve_boards(settings, boards, inventory, blocking=BLOCK_MS / 1000)


def role_lab(args: argparse.Namespace) -> None:
    """The lab API, open (every caller is ``anonymous``, an admin); its queue limits out of
    the way, as the bench keeps at most ``--backlog`` jobs waiting."""
    from fpgalab.service.app import create_app
    from fpgalab.service.settings import Settings

    settings = Settings(
        redis_url=args.redis_url, api_keys="", api_keys_file=None,
        max_queued_per_caller=QUEUE_LIMIT, max_pool_waiting=QUEUE_LIMIT,
    )  # fmt: skip
    api.serve(create_app(settings), args.port)


def bare_app() -> Any:
    """api.py's bare app, and an upload parsed as ``POST /submit`` parses its form."""
    app = api.bare_app()

    @app.post("/upload", status_code=202)
    async def upload(
        file: Annotated[UploadFile, File()],
        platform: Annotated[str | None, Form(max_length=32)] = None,
        tags: Annotated[str | None, Form(max_length=600)] = None,
        priority: Annotated[int, Form(ge=0, le=100)] = 50,
    ) -> dict[str, Any]:
        raw = await file.read()
        return {"job_id": os.urandom(16).hex(), "status": "queued", "fpga_id": None,
                "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                "pool": f"{platform}|{tags}", "priority": priority}  # fmt: skip

    return app


def role_bare(args: argparse.Namespace) -> None:
    api.serve(bare_app(), args.port)


# -- the load: counters ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Counters:
    """What Redis and the processes have done: at one moment, or between two."""

    at: float
    commands: int
    cpu: float
    cpu_sys: float
    cmdstats: dict[str, tuple[int, int]]  # command -> (calls, usec)
    procs: dict[str, float]  # process -> CPU seconds

    def since(self, a: Counters) -> Counters:
        stats = {}
        for name, (calls, usec) in self.cmdstats.items():
            was = a.cmdstats.get(name, (0, 0))
            if calls > was[0]:
                stats[name] = (calls - was[0], usec - was[1])
        procs = {name: cpu - a.procs.get(name, 0.0) for name, cpu in self.procs.items()}
        return Counters(self.at - a.at, self.commands - a.commands, self.cpu - a.cpu,
                        self.cpu_sys - a.cpu_sys, stats, procs)  # fmt: skip

    def add(self, b: Counters) -> Counters:
        stats = dict(self.cmdstats)
        for name, (calls, usec) in b.cmdstats.items():
            was = stats.get(name, (0, 0))
            stats[name] = (was[0] + calls, was[1] + usec)
        procs = {name: self.procs.get(name, 0.0) + cpu for name, cpu in b.procs.items()}
        return Counters(self.at + b.at, self.commands + b.commands, self.cpu + b.cpu,
                        self.cpu_sys + b.cpu_sys, stats, procs)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.at, "commands": self.commands, "cpu": self.cpu,
            "cpu_sys": self.cpu_sys, "cmdstats": self.cmdstats, "procs": self.procs,
        }  # fmt: skip


NO_COUNTERS = Counters(0.0, 0, 0.0, 0.0, {}, {})


# -- the load: the driver -------------------------------------------------------------------


class Driver:
    """One load process: a store, a reader of the event log that releases each board
    whose build is done, and what it saw there of placements and starts."""

    def __init__(self, args: argparse.Namespace) -> None:
        from fpgalab.service.settings import Settings
        from fpgalab.service.store import Actor, Store

        self.args = args
        settings = Settings(
            redis_url=args.redis_url, max_queued_per_caller=QUEUE_LIMIT,
            max_pool_waiting=QUEUE_LIMIT, redis_max_connections=256,
        )  # fmt: skip
        self.store = Store.from_url(args.redis_url, settings)
        self.releaser = Actor("bench-releaser", admin=True)
        # several callers, as a lab has: the pools' fair share takes turns between them
        self.actors = [Actor(f"bench-{i}", admin=True) for i in range(args.concurrency)]
        self.pids = {name: int(pid) for name, _, pid in
                     (item.partition(":") for item in args.pids.split(",") if item)}  # fmt: skip
        self.pids["load"] = os.getpid()
        #: every placement of a build (pool or named) in the event log: (at, job id)
        self.placements: list[tuple[float, str]] = []
        #: (placed at, seconds from placement to the worker's take), from the event log
        self.starts: list[tuple[float, float]] = []
        self.placed_at: dict[str, float] = {}
        #: pool jobs answered as queued and not placed yet: job id -> requirement
        self.waiting: dict[str, str] = {}
        self.waiting_n: collections.Counter[str] = collections.Counter()
        self.inflight: collections.Counter[str] = collections.Counter()
        self.placed_early: set[str] = set()  # placements seen before their submit's answer
        self.gate = asyncio.Event()
        self.release_slots = asyncio.Semaphore(32)
        self.releases: set[asyncio.Future[None]] = set()
        self.on_idle: Callable[[int], None] | None = None
        self.errors: list[str] = []
        self.build_failures = 0
        self.resets_failed = 0
        self.stopping = False
        self.reader: asyncio.Task[None] | None = None
        self.closing = False
        self.sampler: asyncio.Task[None] | None = None
        #: the lowest heartbeat and lease TTLs left seen (ms; -1: lapsed), most boards free
        self.health = {"lease_ms": 10**9, "heartbeat_ms": 10**9, "free_max": 0}

    async def open(self) -> None:
        last = await self.store.redis.xrevrange(keys.EVENT_LOG, count=1)
        self.reader = asyncio.create_task(self.read_events(last[0][0] if last else "0-0"))
        if self.args.mode != "idle":  # the idle lab's own work is measured without it
            self.sampler = asyncio.create_task(self.sample())

    async def close(self) -> None:
        # a flag as well as cancel(): on Python 3.11, asyncio.wait_for (inside redis-py)
        # can swallow a cancellation that lands as its command completes (CPython
        # gh-86296), and the loop would go on (worker.py's JobLog does the same)
        self.closing = True
        for task in (self.reader, self.sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.store.close()

    async def slowlog_on(self, threshold_us: int) -> dict[str, str]:
        """Log every command that takes ``threshold_us`` or more (Redis's slow log); the
        log's settings as they were."""
        r = self.store.redis
        was: dict[str, str] = await r.config_get("slowlog-*")
        await r.config_set("slowlog-max-len", 300_000)
        await r.slowlog_reset()
        await r.config_set("slowlog-log-slower-than", threshold_us)
        return was

    async def slowlog_off(self, was: dict[str, str]) -> dict[str, list[int]]:
        """The slow log since ``slowlog_on`` by command, each script by its name: {name:
        [calls, usec, longest usec]}; the log's settings back as they were."""
        from redis.asyncio import Redis

        from fpgalab.service import lua

        r = self.store.redis
        await r.config_set("slowlog-log-slower-than", was["slowlog-log-slower-than"])
        # a big reply, read on a connection of its own without the lab's deadline
        async with Redis.from_url(self.args.redis_url, decode_responses=True,
                                  socket_timeout=120) as own:  # fmt: skip
            entries = await own.execute_command("SLOWLOG", "GET", -1)  # [id, at, usec, argv..]
        await r.slowlog_reset()
        await r.config_set("slowlog-max-len", was["slowlog-max-len"])
        limit = self.store.settings.event_log_max_entries
        names = {hashlib.sha1(lua.source(n, limit).encode()).hexdigest(): n for n in lua.NAMES}
        library = lua.library(limit)[0] + "_"
        stats: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for _, _, usec, argv, *_ in entries:
            name = str(argv[0]).lower()
            if name == "evalsha":
                name = names.get(str(argv[1]), "evalsha (other)")
            elif name == "fcall":
                name = str(argv[1]).removeprefix(library)
            stats[name][0] += 1
            stats[name][1] += int(usec)
            stats[name][2] = max(stats[name][2], int(usec))
        return dict(stats)

    async def sample(self) -> None:
        """Every 0.5 s: the heartbeat TTL left of each worker and the lease TTL left of the
        first and last board of each (a worker renews its leases in order), the lowest
        seen; the free boards (idle and good), the most seen."""
        r = self.store.redis
        per = self.args.per_worker
        ends = sorted({b for f in range(0, self.args.boards, per)
                       for b in (f, min(f + per, self.args.boards) - 1)})  # fmt: skip
        owners = await r.mget([keys.owner(b) for b in ends])
        workers = sorted({w for w in owners if w})
        while not self.closing:
            pipe = r.pipeline(transaction=False)
            for b in ends:
                pipe.pttl(keys.owner(b))
            for w in workers:
                pipe.pttl(keys.worker(w))
            pipe.scard(keys.FREE)
            *ttls, free = await pipe.execute()
            leases, beats = ttls[: len(ends)], ttls[len(ends) :]
            # PTTL: -2 once the key is gone (lapsed), -1 never (they all have a TTL)
            self.health["lease_ms"] = min(
                self.health["lease_ms"], *(t if t >= 0 else -1 for t in leases)
            )
            self.health["heartbeat_ms"] = min(
                self.health["heartbeat_ms"], *(t if t >= 0 else -1 for t in beats)
            )
            self.health["free_max"] = max(self.health["free_max"], free)
            await asyncio.sleep(0.5)

    async def counters(self) -> Counters:
        r = self.store.redis
        stats, cpu, cmd = await r.info("stats"), await r.info("cpu"), await r.info("commandstats")
        procs = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                procs[name] = cpu_seconds(pid)
        return Counters(
            time.time(), int(stats["total_commands_processed"]),
            float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), float(cpu["used_cpu_sys"]),
            {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in cmd.items()},
            procs,
        )  # fmt: skip

    # -- the event log: placements, starts, builds done -----------------------------------

    async def read_events(self, last: str) -> None:
        while not self.closing:
            reply = await self.store.redis.xread({keys.EVENT_LOG: last}, count=1000, block=200)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self.on_event(json.loads(fields["e"]))

    def on_event(self, e: dict[str, Any]) -> None:
        if e["kind"] == "board":
            if e.get("state") == "idle" and self.on_idle is not None and not self.stopping:
                self.on_idle(int(e["fpga_id"]))
            return
        job, status, board = e["job_id"], e["status"], e.get("fpga_id")
        if e.get("type") == "reset" and status == "failed" and board is not None:
            # a reset that failed (its worker judged lost) leaves the board in error with
            # no session: an admin's reset brings it back, as an operator would
            self.resets_failed += 1
            self.spawn(self.release(int(board), "reset"))
        if e.get("type") != "build_and_program":
            return
        if status == "queued" and board is not None:  # placed: on its board's queue
            self.placements.append((e["at"], job))
            self.placed_at[job] = e["at"]
            req = self.waiting.pop(job, None)
            if req is None:
                self.placed_early.add(job)
            else:
                self.waiting_n[req] -= 1
            self.gate.set()
        elif status == "running" and job in self.placed_at:
            placed = self.placed_at.pop(job)
            self.starts.append((placed, e["at"] - placed))
        elif status in ("complete", "failed", "cancelled") and board is not None:
            self.build_failures += status != "complete"
            self.spawn(self.release(int(board), "release"))

    def spawn(self, release: Awaitable[None]) -> None:
        task = asyncio.ensure_future(release)
        self.releases.add(task)
        task.add_done_callback(self.releases.discard)

    async def release(self, board: int, mode: str) -> None:
        from fpgalab.service.errors import LabError

        async with self.release_slots:
            try:
                await self.store.reset(board, self.releaser, mode)
            except LabError as exc:
                self.errors.append(f"{mode} {board}: {exc}")

    # -- submits ---------------------------------------------------------------------------

    async def pool_submit(self, req: str, actor: Any) -> dict[str, Any]:
        self.inflight[req] += 1
        try:
            reply: dict[str, Any] = await self.store.pool_submit(
                actor, req, 50, "design.py", DESIGN, DESIGN_SHA
            )
        finally:
            self.inflight[req] -= 1
        self.note(reply, req)
        return reply

    async def named_submit(self, board: int, actor: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self.store.submit(
            board, actor, "design.py", DESIGN, DESIGN_SHA
        )
        return reply

    def note(self, reply: dict[str, Any], req: str) -> None:
        """A pool submit's answer: its job waits, unless placed (or seen placed already)."""
        job = reply["job_id"]
        if reply.get("fpga_id") is not None or job in self.placed_early:
            self.placed_early.discard(job)
        else:
            self.waiting[job] = req
            self.waiting_n[req] += 1

    def pick(self) -> str | None:
        """The pool furthest below its share of the backlog, or None if none is below."""
        best, best_fill = None, 1.0
        for req, share in POOLS.items():
            fill = (self.waiting_n[req] + self.inflight[req]) / (self.args.backlog * share)
            if fill < best_fill:
                best, best_fill = req, fill
        return best

    async def next_pool(self) -> str | None:
        """The next pool to submit to, once one is below its share; None once stopping."""
        while not self.stopping:
            req = self.pick()
            if req is not None:
                return req
            self.gate.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 0.1)
        return None

    async def quiet(self, timeout: float = 180) -> None:
        """Until every board is idle and free, no job waits and no release is pending."""
        deadline = time.monotonic() + timeout
        while True:
            free = await self.store.redis.scard(keys.FREE)
            busy = self.waiting or sum(self.inflight.values()) or self.releases
            if free == self.args.boards and not busy:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the lab is not quiet after {timeout} s: {free} boards free of "
                    f"{self.args.boards}, {len(self.waiting)} jobs waiting"
                )
            await asyncio.sleep(0.02)


# -- the load: its modes --------------------------------------------------------------------


async def mode_idle(d: Driver) -> dict[str, Any]:
    """Redis's work with nothing submitted: the workers' own."""
    a = await d.counters()
    await asyncio.sleep(d.args.seconds)
    return (await d.counters()).since(a).as_dict()


async def mode_latency(d: Driver) -> dict[str, Any]:
    """Pool jobs at ``--rate``/s onto idle boards: submit (``created_at``) to the worker's
    take (``started_at``) of those placed at once."""
    reqs = list(POOLS)
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    loop = asyncio.get_running_loop()
    was = await d.slowlog_on(STALL_US)
    start, n = loop.time(), 0
    while loop.time() < start + d.args.seconds:
        actor = d.actors[n % len(d.actors)]
        tasks.append(asyncio.create_task(d.pool_submit(reqs[n % len(reqs)], actor)))
        n += 1
        await asyncio.sleep(max(0.0, start + n / d.args.rate - loop.time()))
    replies = await asyncio.gather(*tasks)
    stalls = await d.slowlog_off(was)
    placed = [r["job_id"] for r in replies if r.get("fpga_id") is not None]
    await d.quiet()
    pipe = d.store.redis.pipeline(transaction=False)
    for job in placed:
        pipe.hmget(keys.job(job), ["created_at", "started_at", "fpga_id"])
    rows = await pipe.execute()
    lat = sorted(float(s) - float(c) for c, s, _ in rows if c and s)
    boards = {int(b) for _, _, b in rows if b}
    return {
        "submitted": n, "placed_at_once": len(placed), "measured": len(lat),
        "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
        "max_ms": 1000 * lat[-1] if lat else float("nan"), "boards_used": len(boards),
        "workers_used": len({b // d.args.per_worker for b in boards}),
        "jobs": placed[:8], "stalls": stalls, "errors": d.errors[:5],
    }  # fmt: skip


async def mode_burst(d: Driver) -> dict[str, Any]:
    """Every board idle, then one job for each, sent by ``--concurrency`` coroutines at
    once: pool jobs for any sim board (``--kind pool``) or named-board submits
    (``named``); again, once all are built, released and idle, until ``--seconds``."""
    spent, rounds, queued = 0.0, 0, 0
    lat: list[float] = []
    window = NO_COUNTERS
    deadline = time.monotonic() + d.args.seconds
    while rounds == 0 or time.monotonic() < deadline:
        await d.quiet()

        async def one(actor: Any, boards: Iterator[int]) -> None:
            nonlocal queued
            for board in boards:  # shared: each board once, by whichever coroutine is free
                t0 = time.perf_counter()
                if d.args.kind == "pool":
                    reply = await d.pool_submit("sim|", actor)
                else:
                    reply = await d.named_submit(board, actor)
                lat.append(time.perf_counter() - t0)
                queued += reply.get("fpga_id") is None

        a = await d.counters()
        t0 = time.perf_counter()
        boards = iter(range(d.args.boards))
        await asyncio.gather(*(one(actor, boards) for actor in d.actors))
        spent += time.perf_counter() - t0
        window = window.add((await d.counters()).since(a))
        rounds += 1
    await d.quiet()
    lat.sort()
    placed = rounds * d.args.boards - queued
    return {
        **window.as_dict(), "rounds": rounds, "placed": placed, "queued": queued,
        "rate": placed / spent, "p50_ms": 1000 * percentile(lat, 50),
        "p99_ms": 1000 * percentile(lat, 99), "errors": d.errors[:5],
    }  # fmt: skip


async def mode_noop(d: Driver) -> dict[str, Any]:
    """Scripts that do nothing, called as ``pool_submit`` is (its 19 arguments), by
    ``--concurrency`` coroutines for ``--seconds`` each: ``return 1`` (the round trip
    alone, ``EVALSHA``), then a function that returns 1 in a library of its own that
    also holds lib.lua (what the lab's library defines beside the scripts), by ``FCALL``."""
    from fpgalab.service import lua
    from fpgalab.service.store import new_id

    s = d.store.settings
    prelude = lua.source("pool_submit", s.event_log_max_entries).removesuffix(
        (Path(lua.__file__).parent / "scripts" / "pool_submit.lua").read_text()
    )
    await d.store.redis.function_load(
        "#!lua name=fpgalab_bench\n" + prelude
        + "\nredis.register_function('fpgalab_bench_noop', function() return 1 end)\n",
        replace=True,
    )  # fmt: skip
    result: dict[str, Any] = {}
    bare = d.store.redis.register_script("return 1")
    args = [
        new_id(), "bench-0", new_id(), s.session_ttl, s.session_max_lifetime,
        "design.py", DESIGN, DESIGN_SHA, "", "", s.idempotency_ttl,
        s.max_queued_per_caller, "1", s.max_boards_per_caller,
        s.storage_budget_bytes, s.storage_budget_window, "sim|", 50,
        s.max_pool_waiting,
    ]  # fmt: skip
    calls_of: dict[str, Callable[[], Awaitable[Any]]] = {
        "evalsha": lambda: bare(args=args),
        "fcall": lambda: d.store.redis.fcall("fpgalab_bench_noop", 0, *args),
    }
    for name, command in (("bare", "evalsha"), ("library", "fcall")):
        calls = 0

        async def one(end: float, call: Callable[[], Awaitable[Any]]) -> None:
            nonlocal calls
            while time.perf_counter() < end:
                await call()
                calls += 1

        a = await d.counters()
        end = time.perf_counter() + d.args.seconds
        await asyncio.gather(*(one(end, calls_of[command]) for _ in range(d.args.concurrency)))
        w = (await d.counters()).since(a)
        stats = w.cmdstats.get(command, (1, 0))
        result[name] = {"rate": calls / w.at, "usec_per_call": stats[1] / max(stats[0], 1)}
    return result


async def mode_sustain(d: Driver) -> dict[str, Any]:
    """Every board cycling for ``--warmup`` + ``--seconds``, measured over the last
    ``--seconds``: ``--kind pool`` keeps ``--backlog`` pool jobs waiting (the scripts that
    free boards place them), ``named`` submits to each board again as it comes back idle,
    ``http`` is ``pool`` through ``POST /submit``."""
    http_lat: list[tuple[float, float]] = []
    http_codes: collections.Counter[int] = collections.Counter()
    loops: list[Awaitable[None]] = []
    submits: set[asyncio.Task[None]] = set()

    async def named(board: int) -> None:
        from fpgalab.service.errors import LabError

        try:
            await d.named_submit(board, d.actors[board % len(d.actors)])
        except LabError as exc:
            d.errors.append(f"submit {board}: {exc}")

    def resubmit(board: int) -> None:
        task = asyncio.create_task(named(board))
        submits.add(task)
        task.add_done_callback(submits.discard)

    async def store_loop(actor: Any) -> None:
        while (req := await d.next_pool()) is not None:
            await d.pool_submit(req, actor)

    async def http_loop() -> None:
        conn = HttpConnection(d.args.port)
        await conn.open()
        bodies = {req: form(req) for req in POOLS}
        try:
            while (req := await d.next_pool()) is not None:
                d.inflight[req] += 1
                t0 = time.time()
                try:
                    status, body = await asyncio.wait_for(
                        conn.request("POST", "/submit", bodies[req], FORM_TYPE), HTTP_TIMEOUT
                    )
                finally:
                    d.inflight[req] -= 1
                http_lat.append((t0, time.time() - t0))
                http_codes[status] += 1
                if status != 202:
                    d.errors.append(f"POST /submit: {status} {body[:200]!r}")
                    return
                d.note(json.loads(body), req)
        finally:
            await conn.close()

    if d.args.kind == "named":
        d.on_idle = resubmit
        for board in range(d.args.boards):
            resubmit(board)
    elif d.args.kind == "pool":
        loops = [store_loop(actor) for actor in d.actors]
    else:
        loops = [http_loop() for _ in range(d.args.http_concurrency)]
    running = asyncio.gather(*loops)
    await asyncio.sleep(d.args.warmup)
    a = await d.counters()
    await asyncio.sleep(d.args.seconds)
    b = await d.counters()
    profile = await profile_commands(d, 1.0)
    d.stopping = True
    stopped = time.monotonic()
    await running
    while submits:
        await asyncio.gather(*submits)
    await d.quiet()
    drain = time.monotonic() - stopped
    placed = sum(a.at <= at < b.at for at, _ in d.placements)
    starts = sorted(s for at, s in d.starts if a.at <= at < b.at)
    lat = sorted(s for t, s in http_lat if a.at <= t < b.at)
    return {
        **b.since(a).as_dict(), "placed": placed, "rate": placed / (b.at - a.at),
        "start_p50_ms": 1000 * percentile(starts, 50),
        "start_p99_ms": 1000 * percentile(starts, 99),
        "http_rps": len(lat) / (b.at - a.at), "http_p50_ms": 1000 * percentile(lat, 50),
        "http_p99_ms": 1000 * percentile(lat, 99), "http_codes": dict(http_codes),
        "profile": profile, "drain_s": drain, "errors": d.errors[:5],
    }  # fmt: skip


async def profile_commands(d: Driver, seconds: float) -> dict[str, Any]:
    """Redis's time by command over ``seconds`` more, every command logged (those inside
    scripts too, each script by its name), and the placements over the same time."""
    was = await d.slowlog_on(0)
    t0 = time.time()
    await asyncio.sleep(seconds)
    t1 = time.time()
    stats = await d.slowlog_off(was)  # the log is off first, then read: seconds, at times
    placed = sum(t0 <= at < t1 for at, _ in d.placements)
    return {"commands": stats, "placed": placed}


async def mode_bare_http(d: Driver) -> dict[str, Any]:
    """The bare app's multipart POST, ``--http-concurrency`` connections back to back."""
    body = form("sim|dsp")
    lat: list[tuple[float, float]] = []
    start = time.time() + d.args.warmup
    end = start + d.args.seconds

    async def one() -> None:
        conn = HttpConnection(d.args.bare_port)
        await conn.open()
        try:
            while time.time() < end:
                t0 = time.time()
                status, reply = await asyncio.wait_for(
                    conn.request("POST", "/upload", body, FORM_TYPE), HTTP_TIMEOUT
                )
                if status != 202:
                    raise RuntimeError(f"POST /upload: {status} {reply[:200]!r}")
                lat.append((t0, time.time() - t0))
        finally:
            await conn.close()

    await asyncio.gather(*(one() for _ in range(d.args.http_concurrency)))
    inside = sorted(s for t, s in lat if start <= t < end)
    return {"http_rps": len(inside) / d.args.seconds, "http_p50_ms": 1000 * percentile(inside, 50),
            "http_p99_ms": 1000 * percentile(inside, 99)}  # fmt: skip


MODES: dict[str, Callable[[Driver], Awaitable[dict[str, Any]]]] = {
    "idle": mode_idle,
    "latency": mode_latency,
    "burst": mode_burst,
    "noop": mode_noop,
    "sustain": mode_sustain,
    "bare_http": mode_bare_http,
}


def role_drive(args: argparse.Namespace) -> None:
    async def main() -> dict[str, Any]:
        d = Driver(args)
        await d.open()
        try:
            result = await MODES[args.mode](d)
            failed = {"builds_failed": d.build_failures, "resets_failed": d.resets_failed}
            return {**result, "health": d.health, **failed}
        finally:
            await d.close()

    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main())
    else:
        result = uvloop.run(main())
    print(json.dumps(result))


# -- the orchestration ----------------------------------------------------------------------


class Children(api.Processes):
    """``api.Processes`` whose children run this file."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir, __file__)


@dataclass
class Lab:
    boards: int
    workers: int
    connections: int  # each worker's redis_max_connections
    redis_url: str
    port: int
    bare_port: int
    pids: dict[str, int]
    procs: Children
    ready_seconds: float
    memory_empty: int


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


@contextlib.contextmanager
def private_redis(prefix: str, keep: Path | None) -> Iterator[tuple[Any, Children]]:
    """A private ``redis-server`` and the children started beside it, all stopped after;
    their logs copied into a new folder of ``keep`` if given."""
    from fpgalab.service.redisproc import PrivateRedis

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        redis = PrivateRedis(Path(tmp) / "redis")
        procs = Children(Path(tmp))
        try:
            redis.start()
            yield redis, procs
        finally:
            procs.stop()
            redis.stop()
            if keep is not None:
                folder = keep / Path(tmp).name
                folder.mkdir(parents=True)
                for log in [*Path(tmp).glob("*.log"), Path(tmp) / "redis" / "redis.log"]:
                    shutil.copy(log, folder / log.name)


@contextlib.contextmanager
def lab_processes(boards: int, args: argparse.Namespace) -> Iterator[Lab]:
    """Redis, the workers of ``boards`` boards, the lab API and the bare app."""
    from fpgalab.service.redisproc import free_port

    connections = max(default_connections(), args.per_worker + SPARE_CONNECTIONS)
    with private_redis(f"fpgalab-scale-{boards}-", args.keep_logs) as (redis, procs):
        with redis_client(redis.url) as r:
            empty = int(r.info("memory")["used_memory"])
        t0 = time.monotonic()
        pids = {"redis": redis.proc.pid}
        firsts = range(0, boards, args.per_worker)
        for k, first in enumerate(firsts):
            count = min(args.per_worker, boards - first)
            pids[f"worker{k}"] = procs.start(
                f"worker{k}", "_worker", "--redis-url", redis.url, "--first", str(first),
                "--count", str(count), "--connections", str(connections),
            ).pid  # fmt: skip
        port, bare_port = free_port(), free_port()
        pids["api"] = procs.start("lab", "_lab", "--port", str(port),
                                  "--redis-url", redis.url).pid  # fmt: skip
        procs.start("bare", "_bare", "--port", str(bare_port))
        api.wait_http(procs, bare_port, "/items")
        api.wait_http(
            procs, port, "/fpga", timeout=180,
            ready=lambda rows: len(rows) == boards
            and all(b["health"] == "good" and b["worker"] for b in rows),
        )  # fmt: skip
        ready = time.monotonic() - t0
        yield Lab(boards, len(firsts), connections, redis.url, port, bare_port, pids, procs,
                  ready, empty)  # fmt: skip
        procs.check()


def drive(lab: Lab, args: argparse.Namespace, mode: str, **extra: Any) -> dict[str, Any]:
    """One load process in ``mode``; its JSON result."""
    from fpgalab.service.procs import child_dies_with_parent

    options = {
        "seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency,
        "http_concurrency": args.http_concurrency, "rate": args.rate, "backlog": args.backlog,
        "per_worker": args.per_worker, **extra,
    }  # fmt: skip
    cmd = [
        sys.executable, __file__, "_drive", "--mode", mode, "--redis-url", lab.redis_url,
        "--port", str(lab.port), "--bare-port", str(lab.bare_port),
        "--boards", str(lab.boards), "--pids", ",".join(f"{k}:{v}" for k, v in lab.pids.items()),
        *(f"--{k.replace('_', '-')}={v}" for k, v in options.items()),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, check=False, timeout=4 * args.seconds + 400, cwd=REPO,
        preexec_fn=child_dies_with_parent,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"load ({mode}) failed:\n{out.stderr.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    if result.get("errors"):
        raise SystemExit(f"load ({mode} {extra}): errors: {result['errors']}")
    lab.procs.check()
    return result


def http_load(lab: Lab, args: argparse.Namespace, *paths: str) -> dict[str, Any]:
    """api.py's load generator (4 keep-alive connections) on ``paths``; and Redis's and
    the API process's CPU per request, over the warm-up too (as many requests/s
    assumed then: api.py counts only those of the measured window)."""
    ns = argparse.Namespace(seconds=args.seconds, warmup=args.warmup, concurrency=4,
                            poll=0.002, max_requests=10_000_000)  # fmt: skip

    def cpu() -> tuple[float, float]:
        with redis_client(lab.redis_url) as r:
            info = r.info("cpu")
        return info["used_cpu_sys"] + info["used_cpu_user"], cpu_seconds(lab.pids["api"])

    (redis0, api0), t0 = cpu(), time.monotonic()
    result = api.run_load(lab.port, ns, "get", *paths)
    (redis1, api1), t1 = cpu(), time.monotonic()
    sent = result["rps"] * (args.warmup + args.seconds)
    return {**result, "redis_us": 1e6 * (redis1 - redis0) / sent,
            "api_us": 1e6 * (api1 - api0) / sent, "seconds_total": t1 - t0}  # fmt: skip


def memory(lab: Lab) -> dict[str, int]:
    """Redis's memory now, the parts of it that are not lab state, and the jobs it keeps."""
    with redis_client(lab.redis_url) as r:
        info = r.info("memory")
        jobs = sum(1 for _ in r.scan_iter(match=f"{keys.PREFIX}:job:*", count=1000, _type="hash"))
        return {
            "used": int(info["used_memory"]), "clients": int(info["mem_clients_normal"]),
            "jobs": jobs, "keys": int(r.dbsize()),
            "eventlog": int(r.memory_usage(keys.EVENT_LOG, samples=0) or 0),
            "audit": int(r.memory_usage(keys.AUDIT, samples=0) or 0),
        }  # fmt: skip


def progress(lab: Lab, what: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {lab.boards:,} boards: {what}", flush=True)


def measure(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    """Every row in one lab, in order; what the workers logged and the jobs' ends."""
    import httpx

    r: dict[str, Any] = {
        "boards": lab.boards, "workers": lab.workers, "ready": lab.ready_seconds,
        "connections": lab.connections, "load_before": os.getloadavg()[0],
    }  # fmt: skip
    time.sleep(1.0)  # the workers' first heartbeats and checks settle
    r["mem_empty"] = lab.memory_empty
    r["mem_idle"] = memory(lab)
    rows: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("idle", lambda: drive(lab, args, "idle", seconds=2)),
        ("fpga", lambda: http_load(lab, args, "/fpga")),
        ("latency", lambda: drive(lab, args, "latency")),
        ("burst_named", lambda: drive(lab, args, "burst", kind="named")),
        ("burst_pool", lambda: drive(lab, args, "burst", kind="pool")),
        ("noop", lambda: drive(lab, args, "noop", seconds=1)),
        ("sustain_named", lambda: drive(lab, args, "sustain", kind="named")),
        ("sustain_pool", lambda: drive(lab, args, "sustain", kind="pool")),
        ("bare_http", lambda: drive(lab, args, "bare_http")),
        ("sustain_http", lambda: drive(lab, args, "sustain", kind="http")),
        ("job_get", lambda: http_load(lab, args, *(f"/jobs/{j}" for j in r["latency"]["jobs"]))),
    ]
    for name, run in rows:
        progress(lab, name)
        r[name] = run()
    r["fpga_bytes"] = len(httpx.get(f"http://{HOST}:{lab.port}/fpga", timeout=10).content)
    time.sleep(0.5)
    r["mem_end"] = memory(lab)
    warnings: collections.Counter[str] = collections.Counter()
    for k in range(lab.workers):
        for line in (lab.procs.logdir / f"worker{k}.log").read_text(errors="replace").splitlines():
            if " WARNING " in line:  # counted by what it says, numbers aside
                warnings[re.sub(r"[0-9a-f]{6,}|\d+", "#", line.partition(" WARNING ")[2])] += 1
    r["worker_warnings"] = warnings.most_common()
    with redis_client(lab.redis_url) as client:
        counts = client.hgetall(keys.METRICS)
    r["jobs_ended"] = {
        k.removeprefix("jobs_finished|"): int(v)
        for k, v in counts.items() if k.startswith("jobs_finished|")
    }  # fmt: skip
    r["load_after"] = os.getloadavg()[0]
    progress(lab, "done")
    return r


def pool_check(args: argparse.Namespace) -> dict[str, Any]:
    """One worker of ``--per-worker`` boards at the default ``redis_max_connections``,
    alone: once its boards are registered and a heartbeat TTL (and 3 s) has gone by, the
    leases it holds, whether its heartbeat lives, the boards checked good."""
    from fpgalab.service.settings import Settings

    ttl = Settings.model_fields["worker_heartbeat_ttl"].default
    n = args.per_worker
    with private_redis("fpgalab-scale-check-", args.keep_logs) as (redis, procs):
        procs.start("worker", "_worker", "--redis-url", redis.url, "--first", "0",
                    "--count", str(n))  # fmt: skip
        with redis_client(redis.url) as r:
            deadline = time.monotonic() + 60
            while r.hlen(keys.INVENTORY) < n and time.monotonic() < deadline:
                procs.check()
                time.sleep(0.1)
            time.sleep(ttl + 3)
            procs.check()
            pipe = r.pipeline(transaction=False)
            for b in range(n):
                pipe.exists(keys.owner(b))
                pipe.hget(keys.board(b), "health")
            replies = pipe.execute()
            workers = sum(1 for _ in r.scan_iter(match=keys.worker("*")))
        log = procs.log("worker")
    return {
        "boards": n, "connections": default_connections(), "seconds": ttl + 3,
        "leases": sum(replies[0::2]), "good": sum(h == "good" for h in replies[1::2]),
        "heartbeat": workers, "no_connection": log.count("No connection available"),
    }  # fmt: skip


# -- the report -----------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def per_job(r: dict[str, Any], row: str) -> dict[str, float]:
    """Work per placed job (one board cycle) in a sustained row; 'net': less the idle
    lab's rate over as long."""
    w, idle = r[row], r["idle"]
    n = max(w["placed"], 1)
    span = w["seconds"] / idle["seconds"]
    evalsha, fcall = (w["cmdstats"].get(c, (0, 0)) for c in ("evalsha", "fcall"))
    return {
        "commands": w["commands"] / n,
        "commands_net": (w["commands"] - idle["commands"] * span) / n,
        "cpu_us": 1e6 * w["cpu"] / n, "cpu_net_us": 1e6 * (w["cpu"] - idle["cpu"] * span) / n,
        "sys_share": w["cpu_sys"] / w["cpu"] if w["cpu"] else 0.0,
        "scripts": (evalsha[0] + fcall[0]) / n, "script_us": (evalsha[1] + fcall[1]) / n,
        "workers_us": 1e6 * sum(v for k, v in w["procs"].items() if k.startswith("worker")) / n,
        "api_us": 1e6 * w["procs"].get("api", 0.0) / n,
        "load_us": 1e6 * w["procs"].get("load", 0.0) / n,
    }  # fmt: skip


def retained_bytes(r: dict[str, Any]) -> float:
    """Memory per job kept, less the growth of the capped streams."""
    end, idle = r["mem_end"], r["mem_idle"]
    grown = end["used"] - idle["used"]
    grown -= (end["eventlog"] - idle["eventlog"]) + (end["audit"] - idle["audit"])
    return float(grown / max(end["jobs"] - idle["jobs"], 1))


def at(*path: str) -> Callable[[dict[str, Any]], float]:
    """A lab's figure at ``path`` in its results."""

    def get(r: dict[str, Any]) -> float:
        for part in path:
            r = r[part]
        return float(cast(float, r))

    return get


def by_boards(table: dict[int, dict[str, float]], key: str) -> Callable[[dict[str, Any]], float]:
    """A lab's figure ``key`` in ``table``, which holds each lab's by its boards."""
    return lambda r: table[r["boards"]][key]


def lowest(rows: list[str], field: str) -> Callable[[dict[str, Any]], float]:
    """A lab's lowest TTL ``field`` left (s) over ``rows``, as the load sampled it."""
    return lambda r: min(r[row]["health"][field] for row in rows) / 1000


class Table:
    """Rows of one figure in the small lab and the big one, and their ratio."""

    def __init__(self, small: dict[str, Any], big: dict[str, Any]) -> None:
        self.small, self.big = small, big
        self.lines: list[str] = []

    def text(self, line: str = "") -> None:
        self.lines.append(line)

    def row(
        self, name: str, key: Callable[[dict[str, Any]], float], fmt: str, unit: str = ""
    ) -> None:
        a, b = key(self.small), key(self.big)
        self.text(f"{name:<46}{a:>11{fmt}} {unit:<5}|{b:>11{fmt}} {unit:<5}| x{ratio(b, a)}")


def report(small: dict[str, Any], big: dict[str, Any], check: dict[str, Any] | None,
           args: argparse.Namespace) -> bool:  # fmt: skip
    S, B = small["boards"], big["boards"]
    t = Table(small, big)
    t.text(f"{'':<46}{f'{S:,} boards':>17}|{f'{B:,} boards':>17}| {B:,}/{S:,}")
    t.row("worker processes", lambda r: r["workers"], "d")
    t.row("  redis_max_connections of each", lambda r: r["connections"], "d")
    t.row("lab ready: workers up, every board good", lambda r: r["ready"], ".1f", "s")
    t.row("machine load (1 min) before / after the rows", lambda r: r["load_before"], ".1f")
    t.row("", lambda r: r["load_after"], ".1f")
    t.row("worker warnings logged", lambda r: sum(n for _, n in r["worker_warnings"]), ",d")
    t.row(
        "jobs lost (their worker judged dead)",
        lambda r: sum(n for k, n in r["jobs_ended"].items() if k.endswith(",lost")),
        ",d",
    )
    t.row("jobs failed", lambda r: sum(n for k, n in r["jobs_ended"].items()
                                       if k.endswith(",failed")), ",d")  # fmt: skip
    t.row("  lost resets (board reset again by the load)", lambda r: sum(
        r[m].get("resets_failed", 0) for m in r if isinstance(r[m], dict)), ",d")  # fmt: skip

    t.text("\n-- memory (INFO memory: used_memory) --")
    t.row("Redis empty", lambda r: r["mem_empty"] / 1e6, ".2f", "MB")
    t.row("Redis with the lab registered, idle", lambda r: r["mem_idle"]["used"] / 1e6, ".2f", "MB")
    t.row(
        "  per board, over the empty Redis",
        lambda r: (r["mem_idle"]["used"] - r["mem_empty"]) / r["boards"],
        ",.0f",
        "B",
    )
    t.row("  of which client connections (per board)",
          lambda r: r["mem_idle"]["clients"] / r["boards"], ",.0f", "B")  # fmt: skip
    per_board = (big["mem_idle"]["used"] - small["mem_idle"]["used"]) / (B - S)
    t.text(f"{'  per board: big lab less small lab, / boards':<46}{per_board:>11,.0f} B")
    t.row("jobs kept at the end (builds and resets)",
          lambda r: r["mem_end"]["jobs"] - r["mem_idle"]["jobs"], ",d")  # fmt: skip
    t.row("  per kept job: all growth",
          lambda r: (r["mem_end"]["used"] - r["mem_idle"]["used"])
          / max(r["mem_end"]["jobs"] - r["mem_idle"]["jobs"], 1), ",.0f", "B")  # fmt: skip
    t.row("  per kept job: less event log and audit", retained_bytes, ",.0f", "B")
    t.row("  event log (capped stream) at the end",
          lambda r: r["mem_end"]["eventlog"] / 1e6, ".2f", "MB")  # fmt: skip

    t.text("\n-- Redis, the lab idle (the workers' queue reads, heartbeats, checks) --")
    t.row("commands/s", lambda r: r["idle"]["commands"] / r["idle"]["seconds"], ",.0f")
    t.row("Redis CPU", lambda r: 100 * r["idle"]["cpu"] / r["idle"]["seconds"], ".1f", "%")
    t.row("workers' CPU, all together",
          lambda r: 100 * sum(v for k, v in r["idle"]["procs"].items() if k.startswith("worker"))
          / r["idle"]["seconds"], ".1f", "%")  # fmt: skip

    t.text("\n-- GET /fpga, two labs (api.py's load generator, 4 connections) --")
    t.row("req/s", lambda r: r["fpga"]["rps"], ",.0f")
    t.row("p50", lambda r: r["fpga"]["p50_ms"], ".2f", "ms")
    t.row("p99", lambda r: r["fpga"]["p99_ms"], ".2f", "ms")
    t.row("answer", lambda r: r["fpga_bytes"] / 1e3, ",.1f", "kB")
    t.row("Redis CPU per request (about)", lambda r: r["fpga"]["redis_us"], ",.0f", "us")
    t.row("API process CPU per request (about)", lambda r: r["fpga"]["api_us"], ",.0f", "us")
    t.text("-- GET /jobs/{id} of a pool job --")
    t.row("req/s", lambda r: r["job_get"]["rps"], ",.0f")
    t.row("p50", lambda r: r["job_get"]["p50_ms"], ".2f", "ms")
    t.row("p99", lambda r: r["job_get"]["p99_ms"], ".2f", "ms")
    t.row("Redis CPU per request (about)", lambda r: r["job_get"]["redis_us"], ",.0f", "us")
    t.row("API process CPU per request (about)", lambda r: r["job_get"]["api_us"], ",.0f", "us")

    t.text(f"\n-- submit -> start, idle boards: pool jobs at {args.rate:g}/s, each released once "
           "built --")  # fmt: skip
    t.row("jobs placed at once", lambda r: r["latency"]["placed_at_once"], ",d")
    t.row("  of jobs submitted", lambda r: r["latency"]["submitted"], ",d")
    t.row("created_at -> started_at p50", lambda r: r["latency"]["p50_ms"], ".2f", "ms")
    t.row("p99", lambda r: r["latency"]["p99_ms"], ".2f", "ms")
    t.row("max", lambda r: r["latency"]["max_ms"], ".2f", "ms")
    t.row("boards used (a pool takes a free board at random)",
          lambda r: r["latency"]["boards_used"],
          "d")  # fmt: skip
    t.row("  worker processes they belong to", lambda r: r["latency"]["workers_used"], "d")
    for r in (small, big):
        stalls = sorted(r["latency"]["stalls"].items(), key=lambda kv: -kv[1][2])
        listed = ", ".join(f"{name} x{n} (longest {top / 1000:.1f} ms)" for name, (n, _, top)
                           in stalls[:5]) or "none"  # fmt: skip
        t.text(f"  Redis commands >= {STALL_US / 1000:g} ms in that row, {r['boards']:,} boards: "
               f"{listed}")  # fmt: skip

    t.text(f"\n-- placements onto idle boards, all at once ({args.concurrency} coroutines, "
           "Store) --")  # fmt: skip
    for r in (small, big):
        bp, bn, noop = r["burst_pool"], r["burst_named"], r["noop"]["bare"]
        t.text(f"{r['boards']:>5,} boards: pool {bp['rate']:>6,.0f}/s (p50 {bp['p50_ms']:.1f}, "
               f"p99 {bp['p99_ms']:.1f} ms; {bp['placed']:,} placed, {bp['queued']} queued) | "
               f"named submit {bn['rate']:>6,.0f}/s: x{ratio(bp['rate'], bn['rate'])} | no-op "
               f"script {noop['rate']:>6,.0f}/s: x{ratio(bp['rate'], noop['rate'])}")  # fmt: skip

    def per_call(row: str, command: str) -> Callable[[dict[str, Any]], float]:
        def get(r: dict[str, Any]) -> float:
            calls, usec = r[row]["cmdstats"].get(command, (0, 0))
            return float(usec / calls) if calls else 0.0

        return get

    t.row("SRANDMEMBER in pool_submit (free_board_for), per call",
          per_call("burst_pool", "srandmember"),
          ".1f", "us")  # fmt: skip
    t.row("the library's cost per call (a no-op FCALL in it, less EVALSHA)",
          lambda r: r["noop"]["library"]["usec_per_call"] - r["noop"]["bare"]["usec_per_call"],
          ".1f", "us")  # fmt: skip

    t.text("\n-- sustained: every board cycling (placed, built, released, reset, placed again) --")
    for r in (small, big):
        sp, sn, sh, bare = r["sustain_pool"], r["sustain_named"], r["sustain_http"], r["bare_http"]
        t.text(
            f"{r['boards']:>5,} boards: pool (Store) {sp['rate']:>6,.0f} placed/s | named "
            f"submits {sn['rate']:>6,.0f}/s: x{ratio(sp['rate'], sn['rate'])}"
        )
        t.text(
            f"{'':>13}POST /submit {sh['rate']:>6,.0f} placed/s, {sh['http_rps']:,.0f} req/s, "
            f"p50 {sh['http_p50_ms']:.1f} p99 {sh['http_p99_ms']:.1f} ms | bare multipart "
            f"POST {bare['http_rps']:,.0f} req/s, p50 {bare['http_p50_ms']:.1f} p99 "
            f"{bare['http_p99_ms']:.1f} ms: x{ratio(sh['http_rps'], bare['http_rps'])}"
        )
    for name, row in (("named", "sustain_named"), ("pool (Store)", "sustain_pool"),
                      ("POST /submit", "sustain_http")):  # fmt: skip
        t.row(f"drain, stop to all boards idle+good: {name}", at(row, "drain_s"), ".1f", "s")
    t.row("pool (Store): placed -> worker's take, p50", lambda r: r["sustain_pool"]["start_p50_ms"],
          ".1f", "ms")  # fmt: skip
    t.row("p99", lambda r: r["sustain_pool"]["start_p99_ms"], ".1f", "ms")

    jobs = {r["boards"]: per_job(r, "sustain_pool") for r in (small, big)}
    http = {r["boards"]: per_job(r, "sustain_http") for r in (small, big)}
    t.text("-- per placed job (one cycle: build, release, reset); pool (Store) row --")
    for key, name, fmt, unit in (
        ("commands", "Redis commands (those in scripts too)", ",.1f", ""),
        ("commands_net", "  net of the idle lab's", ",.1f", ""),
        ("scripts", "  script calls (FCALL, EVALSHA)", ",.2f", ""),
        ("cpu_us", "Redis CPU", ",.0f", "us"),
        ("cpu_net_us", "  net of the idle lab's", ",.0f", "us"),
        ("sys_share", "  of it in the kernel (used_cpu_sys)", ".2f", ""),
        ("script_us", "time in scripts (commandstats fcall, evalsha)", ",.0f", "us"),
        ("workers_us", "workers' CPU", ",.0f", "us"),
        ("load_us", "load process's CPU (submits, releases)", ",.0f", "us"),
    ):
        t.row(name, by_boards(jobs, key), fmt, unit)
    t.row("POST /submit row: Redis CPU", lambda r: http[r["boards"]]["cpu_us"], ",.0f", "us")
    t.row("POST /submit row: the API process's CPU", lambda r: http[r["boards"]]["api_us"],
          ",.0f", "us")  # fmt: skip
    t.text("-- Redis commands whose time per placed job grows most, pool (Store) row --")
    na, nb = max(small["sustain_pool"]["placed"], 1), max(big["sustain_pool"]["placed"], 1)
    sa, sb = small["sustain_pool"]["cmdstats"], big["sustain_pool"]["cmdstats"]
    grow = sorted(
        ((sb.get(c, (0, 0))[1] / nb - sa.get(c, (0, 0))[1] / na, c) for c in set(sa) | set(sb)),
        reverse=True,
    )
    for _, c in grow[:6]:
        (ca, ua), (cb, ub) = sa.get(c, (0, 0)), sb.get(c, (0, 0))
        t.text(f"  {c:<20}{ca / na:>8.2f} calls {ua / na:>7.1f} us | {cb / nb:>8.2f} calls "
               f"{ub / nb:>7.1f} us")  # fmt: skip

    t.text("-- Redis time per placed job by command, each script by name (the slow log at 0 us, "
           "1 s after the pool (Store) row) --")  # fmt: skip
    pa, pb = small["sustain_pool"]["profile"], big["sustain_pool"]["profile"]
    ca, cb = pa["commands"], pb["commands"]
    na, nb = max(pa["placed"], 1), max(pb["placed"], 1)
    t.text(f"  {'':<22}{'calls':>8}{'us/call':>9}{'us/job':>9} |{'calls':>8}{'us/call':>9}"
           f"{'us/job':>9}   ({pa['placed']} and {pb['placed']} placed)")  # fmt: skip
    for c in sorted(set(ca) | set(cb), key=lambda c: -cb.get(c, [0, 0, 0])[1])[:12]:
        (xa, ua, _), (xb, ub, _) = ca.get(c, [0, 0, 0]), cb.get(c, [0, 0, 0])
        t.text(f"  {c:<22}{xa / na:>8.2f}{ua / max(xa, 1):>9.1f}{ua / na:>9.1f} |"
               f"{xb / nb:>8.2f}{ub / max(xb, 1):>9.1f}{ub / nb:>9.1f}")  # fmt: skip

    t.text("-- the workers' liveness as the load saw it (sampled every 0.5 s) --")
    modes = [m for m in small if isinstance(small[m], dict) and "health" in small[m]]
    for what, field in (("heartbeat", "heartbeat_ms"), ("lease", "lease_ms")):
        t.row(f"lowest {what} TTL left, any row (-1: lapsed)", lowest(modes, field), ".1f", "s")
    for r in (small, big):
        worst = sorted(modes, key=lambda m: r[m]["health"]["lease_ms"])[:3]
        t.text(f"  {r['boards']:,} boards, lowest lease TTL left by row: " + ", ".join(
            f"{m} {r[m]['health']['lease_ms'] / 1000:.1f} s" for m in worst))  # fmt: skip
    for r in (small, big):
        if r["worker_warnings"]:
            t.text(f"-- worker warnings at {r['boards']:,} boards, by message (numbers as #) --")
            for message, n in r["worker_warnings"][:6]:
                t.text(f"  {n:>6,}  {message[:110]}")

    if check is not None:
        t.text(
            f"\n-- one worker of {check['boards']} boards alone, at the default "
            f"redis_max_connections ({check['connections']}), after {check['seconds']:g} s --"
        )
        t.text(
            f"boards leased {check['leases']} of {check['boards']}, checked good "
            f"{check['good']}, heartbeat {'alive' if check['heartbeat'] else 'LAPSED'}, "
            f"'No connection available' logged {check['no_connection']} times"
        )

    ok = True
    t.text("\n-- aims --")
    rate = float(big["sustain_pool"]["rate"])
    ok &= (met := rate >= AIM_PLACEMENTS)
    t.text(f">= {AIM_PLACEMENTS:,.0f} placements/s sustained at {B:,} boards: {verdict(met)} "
           f"({rate:,.0f}/s through the store, {big['sustain_http']['rate']:,.0f}/s through "
           f"POST /submit; the Redis CPU per placed job alone allows "
           f"{1e6 / max(jobs[B]['cpu_us'], 1):,.0f}/s)")  # fmt: skip
    p99 = float(big["latency"]["p99_ms"])
    ok &= (met := p99 <= AIM_P99_MS)
    t.text(
        f"p99 submit -> start <= {AIM_P99_MS:g} ms with idle boards at {B:,} boards: "
        f"{verdict(met)} ({p99:.2f} ms; {small['latency']['p99_ms']:.2f} ms at {S:,})"
    )
    for name, a, b in (
        ("memory per kept job", retained_bytes(small), retained_bytes(big)),
        ("Redis commands per job (net)", jobs[S]["commands_net"], jobs[B]["commands_net"]),
        ("Redis CPU per job (net, us)", jobs[S]["cpu_net_us"], jobs[B]["cpu_net_us"]),
    ):
        ok &= (met := bool(b <= FLAT * a))
        t.text(
            f"{name} flat from {S:,} to {B:,} boards (at most x{FLAT:g}): {verdict(met)} "
            f"(x{ratio(b, a)}: {a:,.1f} -> {b:,.1f})"
        )
    print("\n".join(t.lines))
    return ok


def main(args: argparse.Namespace) -> int:
    # a SIGTERM unwinds like Ctrl-C, so that every child is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    print(
        f"fpgalab scale bench: a lab of {args.base_boards:,} boards, then one of "
        f"{args.boards:,} ({args.per_worker} boards per worker process), InstantBackend, one "
        f"redis-server each; {args.warmup:g} s warm-up + {args.seconds:g} s per row; python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cpus",
        flush=True,
    )
    if args.report_from:  # the figures of an earlier run, reported again
        saved = json.loads(args.report_from.read_text())
        results, check = saved["labs"], saved["check"]
    else:
        results = []
        for boards in (args.base_boards, args.boards):
            with lab_processes(boards, args) as lab:
                results.append(measure(lab, args))
        check = None if args.no_pool_check else pool_check(args)
    if args.json:
        args.json.write_text(json.dumps({"labs": results, "check": check}))
    ok = report(results[0], results[1], check, args)
    print(f"{time.monotonic() - t0:.0f} s; aims {'all met' if ok else 'not all met'}")
    return 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="main",
                        choices=["main", "_worker", "_lab", "_bare", "_drive"])  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--boards", type=int, default=1000, help="boards of the big lab")
    parser.add_argument("--base-boards", type=int, default=10, help="boards of the small lab")
    parser.add_argument("--per-worker", type=int, default=100, help="boards per worker process")
    parser.add_argument("--concurrency", type=int, default=16, help="store coroutines (callers)")
    parser.add_argument("--http-concurrency", type=int, default=8, help="HTTP connections")
    parser.add_argument("--rate", type=float, default=100.0, help="submit -> start: jobs/s")
    parser.add_argument("--backlog", type=int, default=128, help="pool jobs kept waiting")
    parser.add_argument("--no-pool-check", action="store_true",
                        help="skip the worker at the default redis_max_connections")  # fmt: skip
    parser.add_argument("--keep-logs", type=Path, help="copy each lab's logs into this folder")
    parser.add_argument("--json", type=Path, help="write every figure measured to this file")
    parser.add_argument("--report-from", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="idle", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="pool", help=argparse.SUPPRESS)
    parser.add_argument("--pids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "main" and not 1 <= args.base_boards < args.boards:
        parser.error("--base-boards: at least 1, and fewer than --boards")
    return args


ROLES = {"_worker": role_worker, "_lab": role_lab, "_bare": role_bare, "_drive": role_drive}

if __name__ == "__main__":
    arguments = parse()
    if arguments.role in ROLES:
        ROLES[arguments.role](arguments)
    else:
        sys.exit(main(arguments))
