"""The worker: takes each board's jobs in order and runs them on a backend.

One asyncio task per board reads that board's queue (a Redis Stream, consumer
group ``workers``), so a board runs one job at a time and boards run in
parallel; backend calls block, so they run in a thread pool sized for the boards.
Beside them: a heartbeat (this worker is alive, and holds its boards' leases) and
housekeeping (expired sessions are reset; jobs of dead workers are failed).

Redis may go away at any time (a restart, a network cut): every loop retries, a
job that ends meanwhile keeps its outcome and log lines until they can be written,
and no worker is judged dead by a heartbeat that lapsed while Redis was away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from fpgalab.backends import (
    Backend,
    BackendError,
    BackendUnavailable,
    Design,
    DesignError,
    Op,
    TracedRun,
    TraceRequest,
    Transaction,
    TransactResult,
)
from fpgalab.service.states import SIM_PLATFORM, BoardState, Event, Health, JobStatus, JobType
from fpgalab.service.store import LeaseLost, Store, new_id
from fpgalab.service.text import one_line

log = logging.getLogger("fpgalab.worker")

T = TypeVar("T")

#: Longest log line kept; a design printing megabytes per line is cut here.
MAX_LINE = 4096
#: What a log past its byte cap (``max_log_bytes``) keeps of the lines after the cut, for
#: its end: the last ones, where a failure's last words are (bytes).
LOG_TAIL = 16 * 1024
#: How often buffered log lines are written to the job's log stream (seconds).
LOG_FLUSH = 0.1
#: How long one queue read blocks; bounds how fast a stop is noticed.
BLOCK_MS = 1000
#: Seconds between attempts at a job's Redis calls while Redis is away.
RETRY_DELAY = 0.5
#: Heartbeat TTLs a job may stay taken by this worker without it in hand (a take whose
#: reply was lost) before it is failed as lost: the board's loop takes it again sooner.
RETAKE_WITHIN = 3
#: Heartbeat lifetimes a worker waits, once Redis answers again after an outage, before
#: it judges other workers by their heartbeats (theirs lapsed while nobody could renew).
OUTAGE_GRACE_TTLS = 2


#: Board states in which a health check may run: the base SoC is on the board (a queued
#: build has not started yet).
_CHECKABLE = frozenset({BoardState.IDLE, BoardState.QUEUED})


class BoardTaken(RuntimeError):
    """Another live worker already holds one of the boards asked for."""


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    event: Event | None = None
    error: str = ""
    result: str = ""
    health: Health | None = None
    health_reason: str = ""
    #: A traced run's waveform (VCD), kept beside its result.
    waveform: bytes = b""


class JobLog:
    """A log callback that backend threads may call; lines reach Redis in batches.

    Lines that cannot be written (Redis away) are kept, the newest ``limit`` of them,
    for the next flush. A log is cut at ``max_log_bytes``: a line says so where it is
    cut, the lines after it are dropped but for the last ``LOG_TAIL`` bytes of them, and
    at its end (``close``) those last lines and a final line saying what was dropped."""

    def __init__(self, store: Store, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self._limit = store.settings.max_log_lines
        self._max_bytes = store.settings.max_log_bytes
        self._bytes = 0  # taken into the log, until it is cut
        self._cut = False
        self._past_lines = self._past_bytes = 0  # after the cut
        self._tail: collections.deque[tuple[str, int]] = collections.deque()
        self._tail_bytes = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __call__(self, text: str) -> None:
        lines = [line[:MAX_LINE] for line in str(text).splitlines()] or [""]
        with self._lock:
            for line in lines:
                self._take(line)
            del self._lines[: -self._limit]

    def _take(self, line: str) -> None:
        """One line into the log, or past its cut (holding the lock)."""
        size = len(line.encode(errors="replace")) + 1
        if not self._cut and self._bytes + size <= self._max_bytes:
            self._bytes += size
            self._lines.append(line)
            return
        if not self._cut:
            self._cut = True
            self._lines.append(
                f"fpgalab: the log is cut here, at its limit of {self._max_bytes} bytes; "
                "only its last lines are kept from here on"
            )
        self._past_lines += 1
        self._past_bytes += size
        self._tail.append((line, size))
        self._tail_bytes += size
        while self._tail_bytes > LOG_TAIL and len(self._tail) > 1:
            self._tail_bytes -= self._tail.popleft()[1]

    def _end_cut(self) -> None:
        """A cut log's last lines, and a final line saying what was dropped."""
        with self._lock:
            if not self._cut or self._closed:
                return
            dropped = self._past_lines - len(self._tail)
            self._lines.extend(line for line, _ in self._tail)
            self._lines.append(
                f"fpgalab: the log was cut at {self._max_bytes} bytes: {dropped} lines after "
                f"the cut were dropped ({self._past_bytes - self._tail_bytes} bytes); the "
                f"{len(self._tail)} lines above this one are its last"
            )
            del self._lines[: -self._limit]

    async def flush(self) -> None:
        """Write the lines buffered so far; on a Redis error they stay buffered."""
        with self._lock:
            lines, self._lines = self._lines, []
        try:
            await self._store.append_logs(self._job_id, lines)
        except BaseException:
            # not (all) written: keep them, oldest first; a resend may repeat a few lines
            with self._lock:
                self._lines[:0] = lines
                del self._lines[: -self._limit]
            raise

    async def _pump(self) -> None:
        # a flag as well as cancel(): on Python 3.11, asyncio.wait_for (inside redis-py)
        # can swallow a cancellation that lands as its command completes (CPython gh-86296)
        while not self._closed:
            await asyncio.sleep(LOG_FLUSH)
            with contextlib.suppress(RedisError):
                await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump())

    async def close(self) -> None:
        """Stop the pump and flush; what Redis does not take now waits for ``flush()``."""
        self._end_cut()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            await self.flush()


class Worker:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        boards: Sequence[int],
        worker_id: str | None = None,
        inventory: Mapping[int, tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.boards = sorted(set(boards))
        #: What the worker registers of each board (platform, tags); by default each is
        #: a ``sim`` board without tags.
        self.inventory = {b: (inventory or {}).get(b, (SIM_PLATFORM, ())) for b in self.boards}
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.settings = store.settings
        self._pool = ThreadPoolExecutor(len(self.boards) + 2, thread_name_prefix="backend")
        self._stopping = asyncio.Event()
        self._last_health: dict[int, float] = {}
        self._busy: set[int] = set()  # boards with a job in hand
        self._lost: set[int] = set()  # boards another worker took over
        self._orphans_at = 0.0  # when to look for boards no worker serves next
        self._in_hand: set[str] = set()  # jobs being taken or run, until their end is written
        # what the job in hand on each board timed, counted with its end (GET /metrics)
        self._measured: dict[int, dict[str, Any]] = {}

    # -- life cycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the boards until ``stop()``; raises BoardTaken if one is held elsewhere."""
        await self._heartbeat_once()
        holders = await self.store.claim_boards(self.boards, self.id)
        taken = {b: h for b, h in zip(self.boards, holders, strict=True) if h != self.id}
        if taken:
            await self.store.drop_worker(self.id, self.boards)
            held = ", ".join(f"{b} by {h}" for b, h in taken.items())
            raise BoardTaken(f"boards already held by live workers: {held}")
        await self.store.register_boards(self.inventory)
        log.info(
            "worker %s serving boards %s with backend %s", self.id, self.boards, self.backend.name
        )
        await self._fail_lost_jobs()
        boards = [asyncio.create_task(self._board_loop(b), name=f"board-{b}") for b in self.boards]
        tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._housekeeping_loop(), name="housekeeping"),
        ]
        try:
            await self._stopping.wait()
            # idle boards stop now; jobs in flight get a grace period to finish
            for board, task in zip(self.boards, boards, strict=True):
                if board not in self._busy:
                    task.cancel()
            await asyncio.wait(boards, timeout=self.settings.worker_stop_grace)
        finally:
            self._stopping.set()  # the loops check it: a cancel alone may be swallowed (JobLog)
            for task in boards + tasks:
                task.cancel()
            await asyncio.gather(*boards, *tasks, return_exceptions=True)
            with contextlib.suppress(RedisError, OSError):
                await self.store.drop_worker(self.id, self.boards)
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped", self.id)

    def stop(self) -> None:
        self._stopping.set()

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- liveness ---------------------------------------------------------------------

    async def _heartbeat_once(self) -> None:
        info = {"boards": self.boards, "backend": self.backend.name, "host": socket.gethostname()}
        await self.store.heartbeat(self.id, info)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.worker_heartbeat_ttl / 3
        while not self._stopping.is_set():
            try:
                await self._heartbeat_once()
                # again at every beat (a no-op unless it changed): a Redis that lost its
                # data (restarted without persistence) has the boards back within a beat
                await self.store.register_boards(self.inventory)
                holders = await self.store.claim_boards(self.boards, self.id)
                for b, holder in zip(self.boards, holders, strict=True):
                    if holder != self.id and b not in self._lost:
                        # our lease lapsed and another worker took the board: let it go
                        log.error("board %d is now held by %s; no longer serving it", b, holder)
                        self._lost.add(b)
            except RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(interval)

    async def _housekeeping_loop(self) -> None:
        grace = OUTAGE_GRACE_TTLS * self.settings.worker_heartbeat_ttl
        outage, judge_from = False, 0.0
        while not self._stopping.is_set():
            try:
                await self._expire_sessions()
                if outage:
                    # Redis is back: every worker's heartbeat may have lapsed meanwhile
                    # (or been lost with a restart); give them time to renew it
                    outage, judge_from = False, time.monotonic() + grace
                if time.monotonic() >= judge_from:
                    await self._fail_lost_jobs()
                    await self._mark_orphans()
            except RedisError as exc:
                log.warning("housekeeping failed: %s", exc)
                outage = True
            await asyncio.sleep(self.settings.housekeeping_interval)

    async def _expire_sessions(self) -> None:
        # every board, not only ours: a session ends on time even while no worker
        # holds its board (the reset then waits in the queue for one)
        for board, session_id in await self.store.expired_sessions():
            reply = await self.store.expire(board, session_id)
            if reply.get("action") == "reset":
                log.info("board %d: session expired, reset job %s queued", board, reply["job_id"])

    async def _mark_orphans(self) -> None:
        """Every heartbeat TTL: boards whose worker is gone (no lease) are not ``good``."""
        now = time.monotonic()
        if now < self._orphans_at:
            return
        self._orphans_at = now + self.settings.worker_heartbeat_ttl
        for board in await self.store.mark_orphans():
            log.warning("board %d: no live worker serves it; health unknown", board)

    async def _fail_lost_jobs(self) -> None:
        running = await self.store.running_jobs()
        owners = sorted({w for _, w, _ in running if w})
        alive = await self.store.alive_workers(owners)
        alive.add(self.id)  # alive by definition, even if Redis lost our heartbeat key
        patience = RETAKE_WITHIN * self.settings.worker_heartbeat_ttl
        for job_id, owner, age in running:
            if owner == self.id and job_id not in self._in_hand and not self._stopping.is_set():
                # Our take went through but its reply was lost with the connection. The
                # board's loop reads its pending entries again (at once after a Redis
                # error, else every heartbeat TTL) and takes the job again: give it time.
                if age < patience:
                    continue
                message = f"worker {owner} lost this job: Redis failed as it was taken"
            elif owner in alive:
                continue
            else:
                message = f"worker {owner} was lost while running this job"
            reply = await self.store.mark_lost(job_id, owner or "", message)
            if reply.get("lost"):
                log.warning("job %s on board %s failed: %s", job_id, reply["fpga_id"], message)

    # -- boards -----------------------------------------------------------------------

    async def _board_loop(self, board: int) -> None:
        check_pending, adopted_at, looked = True, 0.0, False
        while not self._stopping.is_set() and board not in self._lost:
            try:
                if not looked:
                    # First, before any job: check the board (if it is idle or queued), so
                    # that a build accepted before it was checked (health unknown) runs on
                    # a board that is up, or fails at its take if the board is bad.
                    await self._maybe_check_health(board)
                    looked = True
                if time.monotonic() - adopted_at > self.settings.worker_heartbeat_ttl:
                    # now and then: entries read by a worker that lost this board
                    check_pending, adopted_at = True, time.monotonic()
                if check_pending:
                    await self.store.ensure_group(board)
                    await self.store.adopt_pending(board, self.id)
                    entries = await self.store.next_entries(board, self.id, 0, pending=True)
                    check_pending = bool(entries)
                else:
                    entries = await self.store.next_entries(board, self.id, BLOCK_MS)
                self._busy.add(board)
                try:
                    for entry_id, job_id in entries:
                        if self._stopping.is_set():
                            break  # read but not taken: the next holder adopts it
                        await self._handle(board, entry_id, job_id)
                finally:
                    self._busy.discard(board)
                if not entries:
                    await self._maybe_check_health(board)
            except LeaseLost as exc:
                log.error("%s; no longer serving it", exc)
                self._lost.add(board)
            except RedisError as exc:
                log.warning("board %d: redis error, retrying: %s", board, exc)
                check_pending = True
                await asyncio.sleep(0.5)

    async def _maybe_check_health(self, board: int) -> None:
        last = self._last_health.get(board)
        if last is not None and time.monotonic() - last < self.settings.health_interval:
            return
        record, _ = await self.store.board(board)
        if record.get("state", "idle") not in _CHECKABLE:
            return  # a user's design is on it (or going on); it is checked after a reset
        self._last_health[board] = time.monotonic()
        health, reason = await self._check_health(board)
        if health is Health.GOOD:  # published first: a board shown good has its map
            await self._save_memory_map(board)
        await self.store.set_health(board, "check", health, reason, self.id)

    async def _save_memory_map(self, board: int) -> None:
        """Publish the memory map of what is on the board now (served by the API)."""
        try:
            found = await self._in_thread(self.backend.memory_map, board)
        except Exception as exc:  # a map we cannot read must not fail the job
            log.warning("board %d: no memory map: %s", board, exc)
            found = None
        text = json.dumps(found) if found is not None else None
        await self._patiently(f"board {board}: memory map", self.store.set_memory_map, board, text)

    async def _patiently(self, what: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``call``, again every RETRY_DELAY while Redis is away: in the middle of a job
        the board's work is done or under way, and an outage must not fail it."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return await call(*args)
            except RedisError as exc:
                if attempts == 1:
                    log.warning("%s: Redis is away, retrying: %s", what, exc)
                await asyncio.sleep(RETRY_DELAY)

    async def _check_health(self, board: int) -> tuple[Health, str]:
        try:
            report = await self._in_thread(self.backend.health, board)
        except Exception as exc:
            return Health.BAD, f"health check raised {type(exc).__name__}: {exc}"
        if report.ok:
            return Health.GOOD, ""
        return Health.BAD, f"health check failed: {one_line(report.detail)}"

    async def _handle(self, board: int, entry_id: str, job_id: str) -> None:
        self._in_hand.add(job_id)  # before the take: housekeeping must not judge it meanwhile
        try:
            await self._take_and_run(board, entry_id, job_id)
        finally:
            self._in_hand.discard(job_id)

    async def _take_and_run(self, board: int, entry_id: str, job_id: str) -> None:
        job = await self.store.take(board, job_id, self.id, entry_id)
        if job is None:
            return
        joblog = JobLog(self.store, job_id)
        joblog.start()
        self._measured[board] = {"seconds": {}}
        try:
            outcome = await self._execute(board, job, joblog)
        except Exception as exc:  # a bug of ours: fail the job, keep the worker
            log.exception("job %s crashed the worker's handler", job_id)
            joblog(traceback.format_exc())
            outcome = Outcome(
                JobStatus.FAILED, _FAIL_EVENT[JobType(job["type"])],
                f"internal error: {type(exc).__name__}: {exc}", health=Health.UNKNOWN,
                health_reason="the worker hit an internal error",
            )  # fmt: skip
        finally:
            await joblog.close()
        await self._record(job_id, outcome, joblog, self._measured.pop(board, {}))
        if outcome.health:  # the job just checked the board
            self._last_health[board] = time.monotonic()

    async def _record(
        self, job_id: str, outcome: Outcome, joblog: JobLog, measured: dict[str, Any]
    ) -> None:
        """Write the job's last log lines and its end, however long Redis is away: only
        this worker knows the outcome, and nobody fails the job of a live worker."""
        attempts = 0
        timings = json.dumps(measured) if measured.get("seconds") or "cache" in measured else ""

        async def write() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            await joblog.flush()
            return await self.store.finish(
                job_id, self.id, outcome.status, outcome.event or "", outcome.error,
                outcome.result, outcome.health or "", outcome.health_reason, timings,
                outcome.waveform,
            )  # fmt: skip

        reply = await self._patiently(f"job {job_id}: its end", write)
        if reply.get("stale") and attempts == 1:
            log.warning("job %s finished after it was declared lost; outcome dropped", job_id)
        elif reply.get("stale"):  # the attempt that failed may have gone through
            log.warning("job %s: its end was already recorded, or it was declared lost", job_id)
        elif attempts > 1:
            log.info("job %s: its end is recorded now that Redis answers", job_id)

    async def _execute(self, board: int, job: dict[str, str], joblog: JobLog) -> Outcome:
        kind = JobType(job["type"])
        try:
            if kind is JobType.BUILD_AND_PROGRAM:
                return await self._build_and_program(board, job, joblog)
            if kind is JobType.RUN:
                return await self._run(board, job)
            return await self._reset(board, joblog)
        except BackendError as exc:
            joblog(f"error: {exc}")
            return _failure(kind, exc)

    async def _build_and_program(self, board: int, job: dict[str, str], joblog: JobLog) -> Outcome:
        source = await self._patiently(
            f"job {job['job_id']}: design", self.store.design, job["job_id"]
        )
        if source is None:
            return Outcome(JobStatus.FAILED, Event.BUILD_FAIL, "the uploaded design has expired")
        design = Design(job.get("filename", "design"), source.encode())
        size, digest = len(design.source), design.sha256[:12]
        joblog(f"fpgalab: building {design.filename} ({size} bytes, sha256 {digest})")
        started = time.monotonic()
        build = await self._in_thread(self.backend.build, design, joblog)
        took = self._took(board, "build", started)
        self._measured[board]["cache"] = "hit" if build.cached else "miss"
        # A cache hit on somebody else's build must not tell this caller that somebody
        # built the same design: said only to a caller who had this build before.
        caller = job.get("owner", "")
        theirs = await self._patiently(
            f"job {job['job_id']}: its build", self.store.note_build, build.key, caller
        )
        if build.cached and theirs:
            joblog(f"fpgalab: build reused from the lab's cache (you built this design before) "
                   f"in {took:.2f} s")  # fmt: skip
        else:
            joblog(f"fpgalab: build done in {took:.2f} s")
        joblog(f"fpgalab: programming board {board}")
        started = time.monotonic()
        await self._in_thread(self.backend.program, board, build, joblog)
        self._took(board, "program", started)
        await self._save_memory_map(board)
        joblog(f"fpgalab: board {board} programmed; reserved for this session")
        return Outcome(JobStatus.COMPLETE, Event.BUILD_OK)

    async def _run(self, board: int, job: dict[str, str]) -> Outcome:
        request = json.loads(job["request"])
        started = time.monotonic()
        ops = "ops" in request
        txns = [_transaction(op) for op in request["ops"]] if ops else [_transaction(request)]
        traced = None
        if request.get("trace"):
            wanted = request.get("signals")
            ask = TraceRequest(
                signals=tuple(wanted) if wanted else None,
                max_bytes=self.store.settings.max_waveform_bytes,
            )
            traced = await self._in_thread(self.backend.transact_traced, board, txns, ask)
            results = traced.results
        elif ops:
            results = await self._in_thread(self.backend.transact_many, board, txns)
        else:
            results = [await self._in_thread(self.backend.transact, board, txns[0])]
        self._took(board, "run", started)
        return _run_outcome(txns, results, ops, traced)

    async def _reset(self, board: int, joblog: JobLog) -> Outcome:
        joblog(f"fpgalab: resetting board {board} to the base SoC")
        started = time.monotonic()
        await self._in_thread(self.backend.reset, board, joblog)
        self._took(board, "reset", started)
        await self._save_memory_map(board)
        health, reason = await self._check_health(board)
        joblog(
            f"fpgalab: board {board} reset; health {health.value}{': ' + reason if reason else ''}"
        )
        return Outcome(JobStatus.COMPLETE, Event.RESET_OK, health=health, health_reason=reason)

    def _took(self, board: int, phase: str, started: float) -> float:
        """The seconds since ``started``, noted as the job's ``phase`` (service.measures)."""
        took = time.monotonic() - started
        self._measured.setdefault(board, {}).setdefault("seconds", {})[phase] = took
        return took


def _run_outcome(
    txns: list[Transaction], results: list[TransactResult], ops: bool, traced: TracedRun | None
) -> Outcome:
    """A run's end: its result (``service.models.RunResult``) and waveform. One
    transaction fails with the bus's error; a list with ``op N of M: …`` (from 1): the
    first that fails ends it."""
    errors = [None if r.error is None else one_line(r.error) for r in results]
    entries = [
        {"ok": r.ok, "data": r.data, "error": why} for r, why in zip(results, errors, strict=True)
    ]
    error = None
    if len(results) != len(txns) or not all(r.ok for r in results):
        failed = next((i for i, r in enumerate(results) if not r.ok), len(results))
        why = errors[failed] if failed < len(errors) else None
        # a backend that stopped without saying why: a bug of its own
        why = why or ("bus error" if not ops else "not run")
        error = one_line(f"op {failed + 1} of {len(txns)}: {why}") if ops else why
    body: dict[str, Any] = {
        "ok": error is None,
        "data": [word for r in results for word in r.data],
        "error": error,
    }
    if ops:
        body["results"] = entries
    waveform = b""
    if traced is not None:
        body["trace"] = _trace_summary(traced)
        waveform = traced.waveform.data if traced.waveform is not None else b""
    status = JobStatus.COMPLETE if error is None else JobStatus.FAILED
    return Outcome(status, error=error or "", result=json.dumps(body), waveform=waveform)


def _trace_summary(traced: TracedRun) -> dict[str, Any]:
    """What a run's result says of its trace (``service.models.TraceSummary``, every
    field: the result is served as stored)."""
    wave = traced.waveform
    if wave is None:
        why = one_line(traced.error or "no waveform was made")
        return {"ok": False, "error": why, **dict.fromkeys(_WAVEFORM_FIELDS)}
    return {
        "ok": True, "error": None, "format": wave.format, "bytes": len(wave.data),
        "samples": wave.samples, "full": wave.full, "signals": list(wave.signals),
    }  # fmt: skip


_WAVEFORM_FIELDS = ("format", "bytes", "samples", "full", "signals")


def _transaction(request: dict[str, Any]) -> Transaction:
    """A run request's transaction (the API has checked it: ``service.models.RunRequest``)."""
    return Transaction(
        op=Op(request["op"]),
        address=request["address"],
        data=tuple(request.get("data", ())),
        length=request.get("length", 1),
    )


_FAIL_EVENT = {
    JobType.BUILD_AND_PROGRAM: Event.BUILD_FAIL,
    JobType.RUN: Event.FAULT,
    JobType.RESET: Event.RESET_FAIL,
}


def _failure(kind: JobType, exc: BackendError) -> Outcome:
    """How a backend error ends the job, and what it says about the board."""
    # One line, escaped and capped: it reaches terminals and browsers (the log keeps it all).
    message = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, DesignError):
        # the user's fault: the board is fine, but holds no usable design
        event = Event.BUILD_FAIL if kind is JobType.BUILD_AND_PROGRAM else None
        return Outcome(JobStatus.FAILED, event, message)
    health = Health.BAD if isinstance(exc, BackendUnavailable) else Health.UNKNOWN
    if kind is JobType.RESET:
        health = Health.BAD
    return Outcome(
        JobStatus.FAILED, _FAIL_EVENT[kind], message, health=health, health_reason=message
    )
