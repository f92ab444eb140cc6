"""All lab state in Redis: boards, sessions, jobs, queues and logs.

Reads are plain (pipelined) commands; every change that could race goes through
one of the Lua scripts in ``service/scripts``. The API and the workers share this
class; it and the two helpers it holds (``audit``, the audit trail, and
``rate_limiter``, the callers' token buckets) are the only modules that use the key
layout of ``service.keys``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fpgalab.service import keys
from fpgalab.service.audit import AuditLog
from fpgalab.service.errors import NotFound
from fpgalab.service.lua import Scripts, missing
from fpgalab.service.ratelimit import RateLimiter
from fpgalab.service.settings import SentinelURL, Settings
from fpgalab.service.states import BoardState, Health

#: Most log lines appended by one script call.
_APPEND_BATCH = 1000
#: Sets a key's expiry to what is left of it: a write that changes nothing, so that a
#: ``WAIT`` after it covers all that came before it (a replayed answer's first writing).
_REWRITE_EXPIRY = (
    "local ms = redis.call('PTTL', KEYS[1]) if ms > 0 then redis.call('PEXPIRE', KEYS[1], ms) end"
)


def new_id() -> str:
    return uuid.uuid4().hex


def board_ready(record: dict[str, str], worker: str | None) -> bool:
    """Whether a board is up: a live worker holds it (its lease), that worker has checked
    it since it took the board (a check at its start, after a reset, or an idle board's
    periodic one), its health is ``good``, and it is not in ``error``. Whatever its session:
    a reserved board is as ready as an idle one. ``GET /health`` counts these, and
    ``fpgalab serve`` says the lab is ready when all its boards are."""
    return (
        worker is not None
        and record.get("health_checked_by") == worker
        and record.get("health") == Health.GOOD
        and record.get("state", BoardState.IDLE) != BoardState.ERROR
    )


class LeaseLost(RuntimeError):
    """A worker tried to take a job on a board whose lease another worker now holds."""


class NotReplicated(RedisTimeoutError):
    """The primary took a job, but fewer replicas than ``redis_wait_replicas`` confirmed
    it in time: the job is queued on the primary, and lost only if the primary fails
    before a replica has it."""

    def __init__(self, job_id: str | None, wanted: int, acked: int) -> None:
        super().__init__(f"job {job_id}: {acked} of {wanted} replicas confirmed it")
        self.job_id = job_id


class _Sentinel(Sentinel):
    """redis-py's, asking the sentinels for the primary one caller at a time: its
    ``discover_master`` moves the sentinel that answered to the front of the list it
    iterates, and calls that interleave (every new connection makes one) drop sentinel
    clients from that list, never to be closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = asyncio.Lock()

    async def discover_master(self, service_name: str) -> Any:
        async with self._asking:
            return await super().discover_master(service_name)


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's connections, found through the sentinels: each new connection asks
    them where the primary is (after a failover, the new one), and idle connections to a
    former primary are dropped; bounded and waited for as ``BlockingConnectionPool``'s."""


@dataclass(frozen=True)
class Actor:
    """Who acts, as the scripts need it: name, admin role, and the X-Session-ID sent."""

    name: str
    admin: bool = False
    session_header: str = ""


class Store:
    def __init__(self, redis: Redis, settings: Settings, sentinel: Sentinel | None = None) -> None:
        # Any: redis-py types replies as bytes | str; with decode_responses they are str
        self.redis: Any = redis
        self.settings = settings
        self._sentinel = sentinel
        self.scripts = Scripts(redis, settings.event_log_max_entries)
        self.rate_limiter = RateLimiter(self.scripts, settings)
        self.audit = AuditLog(
            self.redis, settings.audit_max_entries, flush=self.rate_limiter.flush_counts
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings, blocking: float = 0.0) -> Store:
        """A store on the Redis at ``url``. Every command has a deadline,
        ``redis_timeout`` seconds (plus ``blocking``, the longest a command of this
        client blocks on purpose: a worker's queue read): a Redis that stalls (stopped,
        swapping, a disk that holds its writes) fails the call with a TimeoutError, which
        the API answers ``503 redis_unavailable``, instead of holding it until Redis
        answers. The connection it was on is dropped, so no late reply is misread.

        The process opens at most ``redis_max_connections`` connections: a command that
        finds them all in use waits for one, within the same deadline (redis-py's default
        pool refuses it at once, so a burst of requests got 503s).

        A ``redis+sentinel://`` URL (``SentinelURL``) names the sentinels instead: each
        new connection asks them for the primary, so that after a failover the commands
        that failed with the old primary (``503``, as in an outage) are followed by ones
        on the new primary, the subscription and the stream readers included. A sentinel
        is asked within the same deadline, without a password."""
        options: dict[str, Any] = dict(
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout,
            password=settings.redis_password(),
            decode_responses=True,
            socket_connect_timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout + blocking,
            health_check_interval=5,
            # A connection that sat idle while Redis restarted fails once, before the
            # command reaches the new server: one retry on a new connection, so the
            # first request after an outage is answered instead of getting a 503.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, (RedisConnectionError,)),
        )
        where = SentinelURL.parse(url)
        if where is None:
            return cls(Redis.from_pool(BlockingConnectionPool.from_url(url, **options)), settings)
        deadline = {"socket_timeout": settings.redis_timeout,
                    "socket_connect_timeout": settings.redis_timeout}  # fmt: skip
        sentinel = _Sentinel(where.sentinels, sentinel_kwargs=deadline)
        options["password"] = options["password"] or where.password
        redis = sentinel.master_for(
            where.service, connection_pool_class=_SentinelPool, db=where.db,
            username=where.username, **options,
        )  # fmt: skip
        return cls(redis, settings, sentinel)

    async def close(self) -> None:
        await self.redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def login_secret(self) -> str:
        """The lab's own secret for login cookies: made once at random and kept in Redis,
        so that every API replica signs and checks with the same one."""
        await self.redis.set(keys.LOGIN_SECRET, secrets.token_hex(32), nx=True)
        secret = await self.redis.get(keys.LOGIN_SECRET)
        assert isinstance(secret, str) and secret
        return secret

    # -- reads -------------------------------------------------------------------

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def memory(self) -> tuple[int, int, str]:
        """Redis's used memory and ``maxmemory`` (bytes; 0: no limit) and its
        ``maxmemory-policy``, from ``INFO memory``."""
        info = await self.redis.info("memory")
        return int(info["used_memory"]), int(info["maxmemory"]), str(info["maxmemory_policy"])

    async def boards(
        self, ids: Iterable[int] | None = None
    ) -> list[tuple[int, dict[str, str], str | None]]:
        """(id, board hash, live worker) for each board of ``ids``, or of the inventory
        (every board a worker registered, by id), in one round trip. A registered board's
        hash carries its ``platform`` and ``tags`` (comma-joined) from the inventory; an
        unregistered one's has no ``platform``."""
        # one script call, not a 2n-command pipeline: redis-py's cost is per reply
        replies = await self.scripts.call("boards", *(ids or ()))
        rows = []
        for fpga_id, flat, worker, entry in replies:
            record = dict(zip(flat[::2], flat[1::2], strict=True))
            if entry:
                record["platform"], record["tags"] = _inventory_entry(entry)
            rows.append((int(fpga_id), record, worker or None))
        return rows

    async def board(self, fpga_id: int) -> tuple[dict[str, str], str | None]:
        """A registered board's hash and live worker; ``fpga_not_found`` for another."""
        [(_, record, worker)] = await self.boards([fpga_id])
        if "platform" not in record:
            raise NotFound("fpga_not_found", f"The lab has no FPGA {fpga_id}: no worker has "
                           "registered a board with that id.")  # fmt: skip
        return record, worker

    async def ready_boards(self, ids: Iterable[int] | None = None) -> list[int]:
        """The registered boards (of ``ids``) that are ready (``board_ready``), in one
        round trip."""
        return [
            i
            for i, record, worker in await self.boards(ids)
            if "platform" in record and board_ready(record, worker)
        ]

    async def register_boards(self, boards: Mapping[int, tuple[str, Sequence[str]]]) -> int:
        """Put boards in the lab's inventory: id -> (platform, tags). How many changed."""
        args: list[object] = []
        for fpga_id, (platform, tags) in sorted(boards.items()):
            args += [fpga_id, platform, ",".join(sorted(set(tags)))]
        reply = await self.scripts.call("register", *args)
        return int(reply["registered"])

    async def job(self, job_id: str) -> dict[str, str]:
        return await self.redis.hgetall(keys.job(job_id))

    async def job_fields(self, job_id: str, *fields: str) -> list[str | None]:
        return await self.redis.hmget(keys.job(job_id), list(fields))

    async def logs(self, job_id: str) -> list[str]:
        entries = await self.redis.xrange(keys.log(job_id))
        return [fields["l"] for _, fields in entries]

    async def log_since(
        self, job_id: str, after: int, count: int
    ) -> tuple[str | None, str | None, list[tuple[int, str]]]:
        """The job's status and error, then (read after them, in the same round trip)
        ``log_lines(job_id, after, count)``."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.job(job_id), ["status", "error"])
        pipe.xrange(keys.log(job_id), f"(0-{after}", "0", count=count)
        (status, error), entries = await pipe.execute()
        return status, error, _numbered(entries)

    async def log_lines(self, job_id: str, after: int, count: int) -> list[tuple[int, str]]:
        """Up to ``count`` lines of the job's log numbered past ``after``, with their
        numbers (line N is entry ``0-N``: see ``append.lua``); lines trimmed off the log's
        start are skipped. A log begun before line numbers has none: it is not read."""
        entries = await self.redis.xrange(keys.log(job_id), f"(0-{after}", "0", count=count)
        return _numbered(entries)

    async def memory_map(self, fpga_id: int) -> tuple[str, str | None, str | None]:
        """(board state, session owner, csr.json or None), in one round trip, read
        atomically (MULTI): the map is never another session's than the owner read."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(keys.board(fpga_id), ["state", "session_owner"])
        pipe.get(keys.memory_map(fpga_id))
        (state, owner), found = await pipe.execute()
        return state or "idle", owner, found

    async def set_memory_map(self, fpga_id: int, csr_json: str | None) -> None:
        if csr_json is None:
            await self.redis.delete(keys.memory_map(fpga_id))
        else:
            await self.redis.set(keys.memory_map(fpga_id), csr_json)

    async def design(self, job_id: str) -> str | None:
        return await self.redis.get(keys.design(job_id))

    async def note_build(self, build_key: str, caller: str) -> bool:
        """Record that ``caller`` was given the build ``build_key``; True if they had been
        before (only then may their log say it came from the lab's cache)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(keys.build_callers(build_key), caller)
        pipe.expire(keys.build_callers(build_key), self.settings.job_retention)
        added, _ = await pipe.execute()
        return not added

    # -- changes requested through the API -----------------------------------------

    async def submit(
        self,
        fpga_id: int,
        actor: Actor,
        filename: str,
        design: str,
        design_sha256: str,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        s = self.settings
        # the same bytes under another name are another request (x.v is Verilog, x.py
        # Python): the name is part of what a replay must match
        idem, fingerprint = self._idempotency(
            actor, idempotency_key, "submit", fpga_id, filename, design_sha256
        )
        return await self._accept(
            idem, "submit", fpga_id, new_id(), actor.name, new_id(), s.session_ttl,
            s.session_max_lifetime, filename, design, design_sha256,
            idem, fingerprint, s.idempotency_ttl, s.max_queued_per_board, s.max_queued_per_caller,
            actor.admin, s.max_boards_per_caller, s.storage_budget_bytes, s.storage_budget_window,
            ",".join(s.denied_tags(actor.name, actor.admin)),
        )  # fmt: skip

    async def run(
        self, fpga_id: int, actor: Actor, request: str, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        s = self.settings
        # the session named by X-Session-ID is part of the request too
        idem, fingerprint = self._idempotency(
            actor, idempotency_key, "run", fpga_id, actor.session_header, request
        )
        return await self._accept(
            idem, "run", fpga_id, new_id(), actor.name, actor.admin, actor.session_header, request,
            idem, fingerprint, s.idempotency_ttl, s.max_queued_per_board, s.max_queued_per_caller,
            s.storage_budget_bytes, s.storage_budget_window,
        )  # fmt: skip

    async def reset(self, fpga_id: int, actor: Actor, mode: str) -> dict[str, Any]:
        """``mode`` is ``reset`` or ``release``; see ``expire`` for expiry."""
        return await self._accept(
            "", "reset", fpga_id, new_id(), actor.name, actor.admin, actor.session_header, mode,
            self.settings.job_retention,
        )  # fmt: skip

    async def pool_submit(
        self,
        actor: Actor,
        requirement: str,
        priority: int,
        filename: str,
        design: str,
        design_sha256: str,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a build for the first free board meeting ``requirement`` (``platform|tag,
        tag``), placed at once if one is free."""
        s = self.settings
        idem, fingerprint = self._idempotency(
            actor, idempotency_key, "pool-submit", -1, requirement, str(priority), filename,
            design_sha256,
        )  # fmt: skip
        return await self._accept(
            idem, "pool_submit", new_id(), actor.name, new_id(), s.session_ttl,
            s.session_max_lifetime, filename, design, design_sha256, idem, fingerprint,
            s.idempotency_ttl, s.max_queued_per_caller, actor.admin, s.max_boards_per_caller,
            s.storage_budget_bytes, s.storage_budget_window, requirement, priority,
            s.max_pool_waiting,
        )  # fmt: skip

    async def pool_standing(self, job_id: str) -> tuple[int | None, float | None, int]:
        """A pool job's queue position (0 once placed; None: not a pool job), its ETA in
        seconds (None: no estimate yet) and the boards in service that meet it."""
        position, eta, boards = await self.scripts.call("pool_job", job_id)
        return (
            None if position is None else int(position),
            None if eta is None else float(eta),
            int(boards),
        )

    async def pool_cancel(self, job_id: str, actor: Actor) -> dict[str, Any]:
        """Cancel a pool job not placed yet; ``{"placed": fpga_id}`` if it was."""
        return await self.scripts.call(
            "pool_cancel", job_id, actor.name, actor.admin, self.settings.job_retention
        )

    async def cancel(self, fpga_id: int, job_id: str, actor: Actor) -> dict[str, Any]:
        return await self.scripts.call(
            "cancel", fpga_id, job_id, actor.name, actor.admin, actor.session_header,
            self.settings.job_retention,
        )  # fmt: skip

    async def renew(self, fpga_id: int, actor: Actor, seconds: int) -> dict[str, Any]:
        return await self.scripts.call(
            "renew", fpga_id, actor.name, actor.admin, actor.session_header, seconds
        )

    async def set_health(
        self, fpga_id: int, mode: str, health: str, reason: str, worker_id: str = ""
    ) -> str:
        """``mode`` ``check`` (a worker's check; ``worker_id`` is that worker),
        ``maintenance`` or ``online`` (an admin)."""
        reply = await self.scripts.call("health", fpga_id, mode, health, reason, worker_id)
        return reply["health"]

    async def _accept(self, idem: str, name: str, *args: Any) -> dict[str, Any]:
        """Run ``name``, a script whose answer is a ``202`` (a job accepted). With
        ``redis_wait_replicas``, only once that many replicas hold what it wrote: a
        ``WAIT`` sent after it on its connection (a ``WAIT`` counts its own connection's
        writes), in one pipeline; else ``NotReplicated``. A redis-py retry on a new
        connection sends the two again, together. With an Idempotency-Key (``idem``, its
        stored answer's key) a no-op write comes between: a replayed answer was written
        by an earlier call, and the ``WAIT`` must cover that too."""
        wanted = self.settings.redis_wait_replicas
        if not wanted:
            return await self.scripts.call(name, *args)
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            self.scripts.queue(pipe, name, *args)
            if idem:
                pipe.eval(_REWRITE_EXPIRY, 1, idem)
            # at most half a deadline, so that the socket's deadline never ends it
            pipe.wait(wanted, int(self.settings.redis_timeout * 500))
            raw, *rest = await pipe.execute(raise_on_error=False)
            if not missing(raw) or attempt:
                break
            await self.scripts.load(name)  # a server that lost its functions (a restart)
        for answer in (raw, *rest):
            if isinstance(answer, Exception):
                raise answer
        reply = self.scripts.reply(name, raw)  # a refusal (LabError) is raised here
        if rest[-1] < wanted:
            raise NotReplicated(reply.get("job_id"), wanted, rest[-1])
        return reply

    def _idempotency(
        self, actor: Actor, key: str | None, route: str, fpga_id: int, *request: str
    ) -> tuple[str, str]:
        """The stored answer's key, and the fingerprint of everything that gives the
        request its meaning: a retry must match it to be replayed."""
        if not key:
            return "", ""
        parts = (route, str(fpga_id), *request)
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        return keys.idempotency(actor.name, key), digest

    # -- housekeeping (workers) ------------------------------------------------------

    async def expire(self, fpga_id: int, session_id: str) -> dict[str, Any]:
        return await self.scripts.call(
            "reset", fpga_id, new_id(), session_id, False, "", "expire",
            self.settings.job_retention,
        )  # fmt: skip

    async def expired_sessions(self, ids: Iterable[int] | None = None) -> list[tuple[int, str]]:
        """(board, session id) of the boards (of ``ids``) whose session expiry has passed."""
        due = await self.redis.zrangebyscore(keys.SESSION_EXPIRY, "-inf", time.time())
        if ids is not None:
            wanted = {str(i) for i in ids}
            due = [d for d in due if d in wanted]
        if not due:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for d in due:
            pipe.hget(keys.board(int(d)), "session_id")
        sids = await pipe.execute()
        return [(int(d), sid or "") for d, sid in zip(due, sids, strict=True)]

    async def running_jobs(self) -> list[tuple[str, str | None, float]]:
        """(job id, worker id, seconds since it was taken, by Redis's clock) of every
        running job."""
        taken = await self.redis.zrange(keys.RUNNING, 0, -1, withscores=True)
        if not taken:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for job_id, _ in taken:
            pipe.hget(keys.job(job_id), "worker")
        (seconds, micros), *workers = await pipe.execute()
        now = seconds + micros / 1e6
        return [(i, w, now - t) for (i, t), w in zip(taken, workers, strict=True)]

    async def mark_orphans(self) -> list[int]:
        """Boards of good health that no live worker serves: marked unknown; their ids."""
        reply = await self.scripts.call("orphans")
        return [int(i) for i in reply["marked"]]

    async def alive_workers(self, worker_ids: Sequence[str]) -> set[str]:
        if not worker_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for w in worker_ids:
            pipe.exists(keys.worker(w))
        alive = await pipe.execute()
        return {w for w, a in zip(worker_ids, alive, strict=True) if a}

    async def mark_lost(self, job_id: str, worker_id: str, message: str) -> dict[str, Any]:
        return await self.scripts.call(
            "lost", job_id, worker_id, message, self.settings.job_retention
        )

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        ttl_ms = int(self.settings.worker_heartbeat_ttl * 1000)
        # its TTL in it: a scrape tells the heartbeat's age from what is left of it
        info = {**info, "ttl": self.settings.worker_heartbeat_ttl}
        await self.redis.set(keys.worker(worker_id), json.dumps(info), px=ttl_ms)

    async def drop_worker(self, worker_id: str, boards: Iterable[int]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.worker(worker_id))
        for b in boards:  # release only the leases this worker still holds
            pipe.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
                1, keys.owner(b), worker_id,
            )  # fmt: skip
        await pipe.execute()

    async def claim_boards(self, boards: Sequence[int], worker_id: str) -> list[str]:
        """Take or renew the lease on each of ``boards`` in one round trip (a worker of a
        hundred boards renews them all within its heartbeat, however loaded Redis is);
        the worker holding each after the call."""
        ttl_ms = int(self.settings.worker_heartbeat_ttl * 1000)
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for fpga_id in boards:
                self.scripts.queue(pipe, "claim", worker_id, ttl_ms, keys=(keys.owner(fpga_id),))
            try:
                replies = await pipe.execute()
            except NoScriptError:  # a Redis that restarted (or a new primary) lacks it
                if attempt == 2:
                    raise
                await self.scripts.load("claim")
                continue
            return [str(r) for r in replies]
        raise AssertionError("unreachable")

    async def claim_board(self, fpga_id: int, worker_id: str) -> str:
        """Take or renew the lease on a board; returns the worker holding it."""
        ttl_ms = int(self.settings.worker_heartbeat_ttl * 1000)
        holder = await self.scripts.call("claim", worker_id, ttl_ms, keys=(keys.owner(fpga_id),))
        return str(holder)

    # -- the job queue (workers) -------------------------------------------------------

    async def ensure_group(self, fpga_id: int) -> None:
        try:
            await self.redis.xgroup_create(keys.queue(fpga_id), keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def next_entries(
        self, fpga_id: int, worker_id: str, block_ms: int, pending: bool = False
    ) -> list[tuple[str, str]]:
        """(entry id, job id) read for this worker: new ones, or its own pending ones."""
        stream = keys.queue(fpga_id)
        try:
            reply = await self.redis.xreadgroup(
                keys.GROUP, worker_id, {stream: "0" if pending else ">"},
                count=1, block=None if pending else block_ms,
            )  # fmt: skip
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group(fpga_id)
            return []
        found: list[tuple[str, str]] = []
        gone: list[str] = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if fields:
                    found.append((entry_id, fields["job_id"]))
                else:
                    gone.append(entry_id)
        if gone:  # pending entries whose message was deleted (a cancelled job)
            await self.redis.xack(stream, keys.GROUP, *gone)
        return found

    async def adopt_pending(self, fpga_id: int, worker_id: str) -> int:
        """Move entries read by earlier holders of this board (now gone) to ``worker_id``."""
        stream, start, moved = keys.queue(fpga_id), "0-0", 0
        while True:
            try:
                reply = await self.redis.xautoclaim(stream, keys.GROUP, worker_id, 0, start)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group(fpga_id)
                return moved
            start, claimed = reply[0], reply[1]
            moved += len(claimed)
            if start == "0-0":
                return moved

    async def take(
        self, fpga_id: int, job_id: str, worker_id: str, entry_id: str
    ) -> dict[str, str] | None:
        """Mark the job running for this worker; None if it must be skipped."""
        reply = await self.scripts.call(
            "take", fpga_id, job_id, worker_id, entry_id, self.settings.job_retention,
            int(self.settings.worker_heartbeat_ttl * 1000),
        )  # fmt: skip
        if reply.get("skip") == "lease lost":
            raise LeaseLost(f"board {fpga_id} is no longer held by {worker_id}")
        if "skip" in reply:
            return None
        flat = reply["job"]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        event: str = "",
        error: str = "",
        result: str = "",
        health: str = "",
        health_reason: str = "",
        measured: str = "",
        waveform: bytes = b"",
    ) -> dict[str, Any]:
        """``measured``: what the worker timed (JSON, ``service.measures``), counted with
        the job's end; ``waveform``: a traced run's VCD, kept as long as the job."""
        return await self.scripts.call(
            "finish", job_id, worker_id, status, event, error, result, health, health_reason,
            self.settings.job_retention, self.settings.storage_budget_window, measured,
            waveform.decode("ascii", "replace"),  # VCD: ASCII, as ``hil.trace`` writes it
        )  # fmt: skip

    async def waveform(self, job_id: str) -> bytes | None:
        """A traced run's waveform (None: the job has none, or it has expired). VCD is
        ASCII (``hil.trace`` writes it from checked names), so the text client reads it."""
        text: str | None = await self.redis.get(keys.waveform(job_id))
        return text.encode("ascii") if text is not None else None

    async def append_logs(self, job_id: str, lines: Sequence[str]) -> None:
        """Append to the job's log; the bytes count against its owner's storage budget."""
        s = self.settings
        for start in range(0, len(lines), _APPEND_BATCH):
            await self.scripts.call(
                "append", job_id, s.max_log_lines, s.storage_budget_window, keys.LOG_NOTICES,
                *lines[start : start + _APPEND_BATCH],
            )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _inventory_entry(entry: str) -> tuple[str, str]:
    """A board's inventory entry (JSON) as (platform, tags): a lab's boards share a few
    entries, each decoded once (GET /fpga of 1,000 boards decoded 1,000)."""
    inventory = json.loads(entry)
    return inventory["platform"], inventory["tags"]


def _numbered(entries: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
    """Log stream entries as (line number, line): entry ``0-N`` is line N."""
    return [(int(entry_id.partition("-")[2]), fields["l"]) for entry_id, fields in entries]
