"""The client's protocol logic, without I/O: what to ask the lab, what its answers mean,
when to ask again. ``Client`` and ``AsyncClient`` share all of it.

Every operation is a *flow*: a generator that yields what it needs done — a ``Call``
(send this request; the answer comes back into the generator, or httpx's transport error
is thrown into it), a ``NextEvent`` (the next Server-Sent Event of a streamed answer),
a ``Sleep``, or an ``Emit`` (hand a value to the caller of an iterator) — and returns
its result. The two clients each drive flows with their own
I/O (``httpx.Client`` and ``time.sleep``; ``httpx.AsyncClient`` and ``asyncio.sleep``),
so that retries, waiting, log following and session keeping are written once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from fpgalab.client._errors import (
    FpgaNotIdle,
    FpgaUnavailable,
    JobFailed,
    JobNotCancellable,
    JobTimeout,
    LabError,
    MethodNotAllowed,
    NoActiveSession,
    NoIdleBoard,
    RouteNotFound,
    SessionMismatch,
    SessionRenewLimit,
    TraceUnavailable,
    TransportError,
    UnexpectedResponse,
    ValidationError,
    error_for,
)
from fpgalab.client._models import (
    AuditEntry,
    Board,
    BoardHealth,
    BoardState,
    Health,
    Job,
    JobAccepted,
    JobStatus,
    JobType,
    MemoryMap,
    PoolJob,
    Read,
    RunResult,
    Session,
    Traced,
    Write,
    op_body,
)

log = logging.getLogger("fpgalab.client")

T = TypeVar("T")

#: Where the lab is when neither an argument nor ``FPGALAB_URL`` says.
DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "FPGALAB_URL"
KEY_ENV = "FPGALAB_API_KEY"
#: Seconds a request may take (connect, each read, each write) unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: Seconds one call may spend waiting to be retried (after 429, 503, a lost answer).
DEFAULT_RETRY_BUDGET = 30.0
#: The longest ``?wait=`` the lab takes, and the shortest this client asks for (seconds).
MAX_WAIT = 30.0
MIN_WAIT = 0.05
#: Polling, where the lab does not wait: the first pause, and the longest (seconds).
FIRST_POLL = 0.05
LAST_POLL = 0.5
#: Times a call whose answer was lost is sent again (a replayable call only).
LOST_ANSWER_RETRIES = 2
#: Seconds a followed log's stream may stay silent before its connection is taken for
#: lost and opened again (the lab sends a keep-alive comment every 15 s).
STREAM_SILENCE = 45.0
#: Lines of a failed job's log that ``JobFailed`` carries.
LOG_TAIL_LINES = 20
#: Seconds ``reserve`` waits for a build (queue time included) unless told otherwise.
BUILD_TIMEOUT = 900.0
#: Seconds a board's read, write or transact waits for its job unless told otherwise
#: (a 65,536-word transfer over a real board's UART takes about a minute).
OP_TIMEOUT = 300.0
#: A session with less than this left (seconds; at most a third of its length) is
#: renewed before a board's next call.
RENEW_WITHIN = 300.0
#: Seconds ``reserve`` waits for a board being reset (a session that has just ended).
RESET_PATIENCE = 60.0
#: Seconds a cleanup (after Ctrl-C or a failure in ``reserve``) waits for a build that
#: can no longer be cancelled, before it gives up and leaves the session to expire.
CLEANUP_TIMEOUT = 120.0

#: Transport errors after which a request may have reached the lab: only a replayable
#: call is sent again. (A refused or timed-out connection is raised at once: the lab is
#: not there, and a command line should say so now, not in 30 s.)
_LOST = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout)


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as sent (again, on a retry: the same ``Idempotency-Key``)."""

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    json: Any = None
    files: Mapping[str, tuple[str, bytes]] | None = None
    #: Form fields sent with ``files`` (multipart).
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Seconds the lab may hold the answer on purpose (``?wait=``): added to the timeout.
    hold: float = 0.0
    #: Sending it twice does nothing twice (a GET; a POST the lab deduplicates by its
    #: ``Idempotency-Key``): it may be sent again when its answer was lost.
    replayable: bool = False
    #: Statuses that are answers rather than errors (``/health``'s 503 is a report).
    answers: frozenset[int] = frozenset()
    #: Its answer's body is read as it comes, an event at a time (``NextEvent``); the
    #: body of an error answer is read whole (the error's code is in it).
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Pool:
    """What a reservation without a board asks for: any board of ``platform`` (any if
    None) with every one of ``tags``, at ``priority`` (the lab's default if None)."""

    platform: str | None = None
    tags: tuple[str, ...] = ()
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class NextEvent:
    """The next Server-Sent Event (``httpx_sse.ServerSentEvent``) of the streamed answer
    ``response`` (of a ``Call(stream=True)``), or None once it has ended. A transport
    error while reading is thrown into the flow. The driver closes every streamed answer
    when its flow ends, however it ends."""

    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Emit:
    """A value for the caller of an iterator (a log line)."""

    value: Any


#: A design: a path, or its bytes (then with a file name).
Design = str | os.PathLike[str] | bytes
#: One Wishbone op: ``Read``, ``Write``, or the API's JSON of one (``{"op": 1, ...}``).
Op = Read | Write | Mapping[str, Any]

Step = Call | NextEvent | Sleep | Emit
Flow = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class Options:
    """What a client is made with, arguments over the environment."""

    url: str
    api_key: str | None
    timeout: float
    retry_budget: float

    @classmethod
    def resolve(
        cls, url: str | None, api_key: str | None, timeout: float, retry_budget: float
    ) -> Options:
        url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        key = api_key if api_key is not None else os.environ.get(KEY_ENV) or None
        if timeout <= 0 or retry_budget < 0:
            raise ValueError("timeout must be over 0 and retry_budget at least 0")
        return cls(url.rstrip("/"), key, timeout, retry_budget)

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}


def design_upload(design: Design, filename: str | None) -> tuple[str, bytes]:
    """(file name, bytes) of a design given as a path, or as bytes with a name."""
    if isinstance(design, bytes | bytearray):
        if not filename:
            raise ValueError("a design given as bytes needs a filename (e.g. 'alu.py')")
        return filename, bytes(design)
    path = Path(design)
    return filename or path.name, path.read_bytes()


def server_now(response: httpx.Response) -> datetime:
    """The lab's clock at its answer: ours, unless the answer's ``Date`` (whole seconds)
    says ours is off by more than a second or two; then the middle of that second."""
    ours = datetime.now(UTC)
    try:
        theirs = parsedate_to_datetime(response.headers["date"])
    except (KeyError, TypeError, ValueError):
        return ours
    if abs((ours - theirs).total_seconds() - 0.5) < 2:
        return ours
    return theirs + timedelta(seconds=0.5)


def _session_headers(session_id: str | None) -> dict[str, str]:
    return {"X-Session-ID": session_id} if session_id else {}


def _idempotent(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


@dataclass
class SessionState:
    """What a board session knows: its board and session, when it ends, and whether it
    has been released (``BoardSession`` and ``AsyncBoardSession`` hold one)."""

    fpga_id: int
    session_id: str
    #: The build job that opened it (None when attached to an existing session).
    build: Job | None
    #: ``time.monotonic()`` when the session ends unless renewed (None: unknown).
    ends: float | None
    #: The session's length as the lab gave it (seconds; None: unknown).
    length: float | None
    renew_within: float
    op_timeout: float | None
    memory_map: MemoryMap | None = None
    released: bool = False
    #: The reset job that the release queued (None: not released, or nothing to reset).
    release_job: JobAccepted | None = None
    #: The run jobs the session has queued (ids, oldest first).
    runs: list[str] = field(default_factory=list)

    def learn_expiry(self, expires_at: datetime, now: datetime) -> None:
        left = (expires_at - now).total_seconds()
        self.ends = time.monotonic() + left
        self.length = max(self.length or 0.0, left)


class Protocol:
    """The flows of one client; ``waits`` is whether the lab takes ``?wait=`` (a lab
    that answers it with 422 is polled instead, by this client from then on), and
    ``streams`` whether it streams a log as it grows (a lab that answers the stream's
    request with the plain log is polled instead)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.waits = True
        self.streams = True
        self.pools = True

    # Sending, retrying and reading ---------------------------------------------------------

    def exchange(self, call: Call) -> Flow[httpx.Response]:
        """Send ``call``; retry it after 429 and 503 (after ``Retry-After``) and, when it is
        replayable, after a lost answer, while the retry budget lasts; raise the typed
        error of any other error answer."""
        started = time.monotonic()
        lost = 0
        while True:
            try:
                response: httpx.Response = yield call
            except httpx.TransportError as exc:
                delay = 0.1 * 2**lost
                if (
                    call.replayable
                    and isinstance(exc, _LOST)
                    and lost < LOST_ANSWER_RETRIES
                    and self._may_wait(started, delay)
                ):
                    lost += 1
                    log.info("%s %s: %s; sending it again", call.method, call.path, _name(exc))
                    yield Sleep(delay)
                    continue
                raise TransportError(
                    f"{call.method} {self.options.url}{call.path}: {_name(exc)}"
                    + (f" ({exc})" if str(exc) else "")
                ) from exc
            status = response.status_code
            if status < 400 or status in call.answers:
                return response
            error = error_for(response)
            if status in (429, 503):
                delay = error.retry_after if error.retry_after is not None else 1.0
                if self._may_wait(started, delay):
                    log.info(
                        "%s %s: %s %s; retrying in %g s",
                        call.method,
                        call.path,
                        status,
                        error.code,
                        delay,
                    )
                    yield Sleep(delay)
                    continue
            raise error

    def _may_wait(self, started: float, delay: float) -> bool:
        return time.monotonic() - started + delay <= self.options.retry_budget

    def json(self, call: Call) -> Flow[Any]:
        response = yield from self.exchange(call)
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponse(
                f"{call.method} {call.path}: the answer is not JSON", response
            ) from None

    def get(
        self,
        path: str,
        session_id: str | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Flow[Any]:
        headers = _session_headers(session_id)
        call = Call("GET", path, params=params or None, headers=headers, replayable=True)
        return (yield from self.json(call))

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        session_id: str | None = None,
        replayable: bool = False,
        key: str | None = None,
    ) -> Flow[httpx.Response]:
        """A POST, with an ``Idempotency-Key`` of its own (one per call, kept across its
        retries). Replayable: the lab deduplicates it (submit, run) or it is idempotent."""
        headers = {**_idempotent(key), **_session_headers(session_id)}
        call = Call("POST", path, json=body, headers=headers, replayable=replayable)
        return (yield from self.exchange(call))

    # The lab ------------------------------------------------------------------------------

    def health(self) -> Flow[Health]:
        call = Call("GET", "/health", replayable=True, answers=frozenset({503}))
        return Health.parse((yield from self.json(call)))

    def boards(self) -> Flow[list[Board]]:
        raw = yield from self.get("/fpga")
        if not isinstance(raw, list):
            raise UnexpectedResponse("GET /fpga: expected a JSON array")
        return [Board.parse(one) for one in raw]

    def board(self, fpga_id: int) -> Flow[Board]:
        return Board.parse((yield from self.get(f"/fpga/{fpga_id}")))

    def memory_map(self, fpga_id: int) -> Flow[MemoryMap]:
        return MemoryMap.parse((yield from self.get(f"/fpga/{fpga_id}/memory-map")))

    def maintenance(self, fpga_id: int, reason: str | None) -> Flow[Board]:
        body = None if reason is None else {"reason": reason}
        response = yield from self.post(f"/fpga/{fpga_id}/maintenance", body, replayable=True)
        return Board.parse(_body(response))

    def online(self, fpga_id: int) -> Flow[Board]:
        response = yield from self.post(f"/fpga/{fpga_id}/online", replayable=True)
        return Board.parse(_body(response))

    def audit(
        self, fpga_id: int | None, caller: str | None, limit: int | None, before: str | None
    ) -> Flow[list[AuditEntry]]:
        query = {"fpga_id": fpga_id, "caller": caller, "limit": limit, "before": before}
        params = {k: v for k, v in query.items() if v is not None}
        raw = yield from self.get("/audit", params=params)
        if not isinstance(raw, list):
            raise UnexpectedResponse("GET /audit: expected a JSON array")
        return [AuditEntry.parse(one) for one in raw]

    # Jobs ---------------------------------------------------------------------------------

    def submit(
        self,
        fpga_id: int,
        design: Design,
        filename: str | None,
        key: str | None = None,
    ) -> Flow[tuple[JobAccepted, datetime]]:
        """The accepted build and the lab's clock when it accepted it."""
        name, data = design_upload(design, filename)
        call = Call(
            "POST",
            f"/fpga/{fpga_id}/submit",
            files={"file": (name, data)},
            headers=_idempotent(key),
            replayable=True,
        )
        response = yield from self.exchange(call)
        return JobAccepted.parse(_body(response)), server_now(response)

    def pool_submit(
        self, design: Design, filename: str | None, pool: Pool, key: str | None = None
    ) -> Flow[PoolJob]:
        """A build for the first free board of ``pool`` (``POST /submit``)."""
        name, data = design_upload(design, filename)
        fields = {}
        if pool.platform:
            fields["platform"] = pool.platform
        if pool.tags:
            fields["tags"] = ",".join(pool.tags)
        if pool.priority is not None:
            fields["priority"] = str(pool.priority)
        call = Call(
            "POST",
            "/submit",
            files={"file": (name, data)},
            data=fields,
            headers=_idempotent(key),
            replayable=True,
        )
        response = yield from self.exchange(call)
        return PoolJob.parse(_body(response))

    def pool_job(self, job_id: str, wait: float | None = None) -> Flow[PoolJob]:
        """A job by its id alone (``GET /jobs/{job_id}``); with ``wait``, held until it has
        finished or, waiting for a board, until it is placed."""
        call = Call(
            "GET",
            f"/jobs/{job_id}",
            params={"wait": _seconds(wait)} if wait else None,
            hold=wait or 0.0,
            replayable=True,
        )
        return PoolJob.parse((yield from self.json(call)))

    def placed(self, job: PoolJob, timeout: float | None) -> Flow[PoolJob]:
        """``job`` once a board has taken it (or it has ended without one); past
        ``timeout`` seconds, ``NoIdleBoard`` saying where it stands."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job.placed or job.finished):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                eta = f", about {job.eta_seconds:.0f} s more" if job.eta_seconds else ""
                raise NoIdleBoard(
                    f"pool job {job.job_id} found no board within {timeout:g} s "
                    f"({job.queue_position} ahead of it{eta}); it was cancelled"
                )
            hold = MAX_WAIT if left is None else max(MIN_WAIT, min(MAX_WAIT, left))
            job = yield from self.pool_job(job.job_id, hold)
        return job

    def pool_reserve(
        self, design: Design, filename: str | None, pool: Pool
    ) -> Flow[PoolJob | None]:
        """A reservation's pool job; None from a lab without pools (older: ``POST /submit``
        is not there) when ``pool`` asks for nothing a client-side search cannot do (then
        ``pools`` is False from here on)."""
        try:
            return (yield from self.pool_submit(design, filename, pool))
        except (RouteNotFound, MethodNotAllowed) as exc:
            if pool.platform or pool.tags or pool.priority is not None:
                exc.add_note("fpgalab: this lab has no pools (POST /submit): name a board")
                raise
            log.info("this lab has no pools; looking for an idle board instead")
            self.pools = False
            return None

    def placed_build(self, job: PoolJob) -> JobAccepted:
        """A placed pool job as the accepted build of its board."""
        if job.fpga_id is None:
            raise NoIdleBoard(
                f"pool job {job.job_id} ended {job.status} before a board took it"
                + (f": {job.error}" if job.error else "")
            )
        return JobAccepted(job.job_id, job.fpga_id, job.status, job.session_id)

    def cancel_anywhere(self, job_id: str) -> Flow[None]:
        """Cancel a job by its id alone (``DELETE /jobs/{job_id}``)."""
        yield from self.exchange(Call("DELETE", f"/jobs/{job_id}"))

    def abandon_pool(self, job: PoolJob, timeout: float = CLEANUP_TIMEOUT) -> Flow[None]:
        """Give back what a pool reservation that will not be used holds: the waiting job
        (cancelled: it never runs), or, once placed, its board (as ``abandon``)."""
        try:
            yield from self.cancel_anywhere(job.job_id)
            log.info("pool job %s cancelled", job.job_id)
            return
        except JobNotCancellable:
            pass  # a worker has its build: wait for it, then give the board back
        now = yield from self.pool_job(job.job_id)
        if now.fpga_id is None:
            return  # it ended without a board
        accepted = JobAccepted(job.job_id, now.fpga_id, now.status, now.session_id)
        yield from self.abandon(accepted, timeout)

    def submit_anywhere(
        self, design: Design, filename: str | None, patience: float
    ) -> Flow[tuple[JobAccepted, datetime]]:
        """Submit to the first board that takes it: idle ones of good health first; if
        none is idle but some are being reset, wait (up to ``patience`` seconds) for the
        first reset to end and look again."""
        name, data = design_upload(design, filename)  # once, not once per board
        deadline = time.monotonic() + patience
        while True:
            boards = yield from self.boards()
            free = sorted(
                (b for b in boards if b.available),
                key=lambda b: (b.health is not BoardHealth.GOOD, b.fpga_id),
            )
            for board in free:
                try:
                    return (yield from self.submit(board.fpga_id, data, name))
                except (FpgaNotIdle, FpgaUnavailable):
                    continue  # taken by someone else since the list was read
            soon = [b for b in boards if _resetting(b)]
            left = deadline - time.monotonic()
            if not soon or left <= 0:
                raise NoIdleBoard(
                    f"no board of {len(boards)} is idle and in service"
                    + (f" ({len(free)} were, but others took them first)" if free else "")
                )
            board = soon[0]
            assert board.current_job_id is not None
            yield from self.wait(board.fpga_id, board.current_job_id, left, check=False)

    def submit_when_free(
        self, fpga_id: int, design: Design, filename: str | None, patience: float
    ) -> Flow[tuple[JobAccepted, datetime]]:
        """Submit; a board still being reset (a session that has just ended: its own
        user's, often) is waited for, up to ``patience`` seconds, then submitted to."""
        name, data = design_upload(design, filename)
        deadline = time.monotonic() + patience
        while True:
            try:
                return (yield from self.submit(fpga_id, data, name))
            except FpgaNotIdle:
                board = yield from self.board(fpga_id)
                left = deadline - time.monotonic()
                if not _resetting(board) or left <= 0:
                    raise
                assert board.current_job_id is not None
                yield from self.wait(fpga_id, board.current_job_id, left, check=False)

    def run(
        self,
        fpga_id: int,
        ops: Op | Sequence[Op],
        session_id: str | None,
        key: str | None = None,
        wait: float | None = None,
        trace: bool = False,
        signals: Sequence[str] | None = None,
    ) -> Flow[JobAccepted]:
        """One op as the API's single-op body; a sequence as ``{"ops": [...]}``. With
        ``wait``, the lab answers once the run has finished (``.result``) or after ``wait``
        seconds (``.result`` None): a read is then one request. ``trace``: the board's
        logic analyzer captures the run (``signals``: which; default all)."""
        if isinstance(ops, Read | Write | Mapping):
            body = op_body(ops)
        else:
            body = {"ops": [op_body(op) for op in ops]}
        if trace:
            body["trace"] = True
            if signals:
                body["signals"] = list(signals)
        headers = {**_idempotent(key), **_session_headers(session_id)}
        call = Call(
            "POST",
            f"/fpga/{fpga_id}/run",
            params={"wait": _seconds(wait)} if wait else None,
            json=body,
            headers=headers,
            hold=wait or 0.0,
            replayable=True,
        )
        response = yield from self.exchange(call)
        return JobAccepted.parse(_body(response))

    def job(self, fpga_id: int, job_id: str, session_id: str | None = None) -> Flow[Job]:
        return Job.parse((yield from self.get(f"/fpga/{fpga_id}/jobs/{job_id}", session_id)))

    def result(self, fpga_id: int, job_id: str, session_id: str | None) -> Flow[RunResult]:
        raw = yield from self.get(f"/fpga/{fpga_id}/jobs/{job_id}/result", session_id)
        return RunResult.parse(raw)

    def waveform(self, fpga_id: int, job_id: str, session_id: str | None) -> Flow[bytes]:
        """A traced run's waveform (VCD bytes)."""
        call = Call(
            "GET",
            f"/fpga/{fpga_id}/jobs/{job_id}/waveform",
            headers=_session_headers(session_id),
            replayable=True,
        )
        response = yield from self.exchange(call)
        return response.content

    def log_text(self, fpga_id: int, job_id: str, session_id: str | None) -> Flow[str]:
        call = Call(
            "GET",
            f"/fpga/{fpga_id}/jobs/{job_id}/logs",
            headers=_session_headers(session_id),
            replayable=True,
        )
        response = yield from self.exchange(call)
        return response.text

    def cancel(self, fpga_id: int, job_id: str, session_id: str | None) -> Flow[None]:
        call = Call(
            "DELETE", f"/fpga/{fpga_id}/jobs/{job_id}", headers=_session_headers(session_id)
        )
        yield from self.exchange(call)

    def wait(
        self,
        fpga_id: int,
        job_id: str,
        timeout: float | None,
        check: bool,
        session_id: str | None = None,
    ) -> Flow[Job]:
        """The job once finished. The lab holds each answer until the job finishes
        (``?wait=``, up to 30 s a time); a lab that does not is polled, each pause longer
        than the last up to half a second. Past ``timeout``: ``JobTimeout``. With
        ``check``, a failed or cancelled job raises ``JobFailed``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FIRST_POLL
        path = f"/fpga/{fpga_id}/jobs/{job_id}"
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            hold = 0.0
            if self.waits and (left is None or left > 0):
                hold = MAX_WAIT if left is None else max(MIN_WAIT, min(MAX_WAIT, left))
            call = Call(
                "GET",
                path,
                params={"wait": _seconds(hold)} if hold else None,
                headers=_session_headers(session_id),
                hold=hold,
                replayable=True,
            )
            asked = time.monotonic()
            try:
                job = Job.parse((yield from self.json(call)))
            except ValidationError as exc:
                if hold and "wait" in exc.message:
                    log.info("this lab does not take ?wait= (%s); polling instead", exc.message)
                    self.waits = False
                    continue
                raise
            if job.finished:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(job, timeout or 0.0)
            if not hold or time.monotonic() - asked < hold / 2:
                # answered at once with the job unfinished: this lab does not wait (yet)
                nap = pause if deadline is None else min(pause, deadline - time.monotonic())
                yield Sleep(max(nap, 0.0))
                pause = min(pause * 1.5, LAST_POLL)
        if check and not job.ok:
            raise (yield from self.failure(job, session_id))
        return job

    def finished_result(
        self, fpga_id: int, job_id: str, timeout: float | None, session_id: str | None
    ) -> Flow[RunResult | None]:
        """A run's result once it has finished, in one request a time (``?wait=`` on the
        result: no separate wait for the job); None if it finished without one (a
        cancelled run). Past ``timeout``: ``JobTimeout``. A lab that does not wait on the
        result is waited on as ``wait`` does, then asked for the result."""
        if not self.waits:
            job = yield from self.wait(fpga_id, job_id, timeout, False, session_id)
            if job.status is JobStatus.CANCELLED:
                return None
            return (yield from self.result(fpga_id, job_id, session_id))
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/fpga/{fpga_id}/jobs/{job_id}/result"
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobTimeout((yield from self.job(fpga_id, job_id, session_id)), timeout or 0)
            hold = MAX_WAIT if left is None else max(MIN_WAIT, min(MAX_WAIT, left))
            call = Call(
                "GET",
                path,
                params={"wait": _seconds(hold)},
                headers=_session_headers(session_id),
                hold=hold,
                replayable=True,
                answers=frozenset({409}),
            )
            asked = time.monotonic()
            try:
                response = yield from self.exchange(call)
            except ValidationError as exc:
                if "wait" not in exc.message:
                    raise
                log.info("this lab does not take ?wait= (%s); polling instead", exc.message)
                self.waits = False
                return (yield from self.finished_result(fpga_id, job_id, left, session_id))
            if response.status_code != 409:
                return RunResult.parse(_body(response))
            error = error_for(response)
            if error.code != "job_not_complete":
                raise error
            job = yield from self.job(fpga_id, job_id, session_id)
            if job.status is JobStatus.CANCELLED:
                return None
            if job.finished:  # finished between the two answers: its result is there now
                return (yield from self.result(fpga_id, job_id, session_id))
            if time.monotonic() - asked < hold / 2:
                # answered at once, unfinished: a lab that ignores ?wait= (older): poll
                log.info("this lab does not wait on a result; polling instead")
                self.waits = False
                left = None if deadline is None else deadline - time.monotonic()
                return (yield from self.finished_result(fpga_id, job_id, left, session_id))

    def failure(self, job: Job, session_id: str | None) -> Flow[JobFailed]:
        """``JobFailed`` for ``job``, with its log's tail and, for a run, its result (each
        left out if it cannot be read)."""
        result: RunResult | None = None
        tail: list[str] = []
        if job.type is JobType.RUN:
            try:
                result = yield from self.result(job.fpga_id, job.job_id, session_id)
            except LabError:
                result = None  # a cancelled run has none
        else:
            try:
                tail = _lines((yield from self.log_text(job.fpga_id, job.job_id, session_id)))
            except LabError:
                tail = []
        return JobFailed(job, tail[-LOG_TAIL_LINES:], result)

    def log_lines(
        self, fpga_id: int, job_id: str, follow: bool, session_id: str | None
    ) -> Flow[None]:
        """Emit the job's log line by line; with ``follow``, go on emitting lines as they
        come until the job has finished: from the lab's stream of the log, or, from a lab
        that does not stream it, by reading the log again and again."""
        streamed = follow and self.streams
        if streamed and (yield from self.streamed_log(fpga_id, job_id, session_id)):
            return
        yield from self.polled_log(fpga_id, job_id, follow, session_id)

    def streamed_log(self, fpga_id: int, job_id: str, session_id: str | None) -> Flow[bool]:
        """Emit the job's log lines as the lab streams them (``Accept: text/event-stream``:
        each line once, numbered), until its ``end`` event; False, having emitted
        nothing, if the lab answers with the plain log instead (then ``streams`` is
        False from here on).

        A stream cut off (a lost connection, an API replica stopped, a silence longer
        than ``STREAM_SILENCE``) is opened again with ``Last-Event-ID``, the number of
        the last line emitted, so that no line is emitted twice or skipped; reopening
        is retried while the retry budget lasts, counted from the cut."""
        path = f"/fpga/{fpga_id}/jobs/{job_id}/logs"
        after = 0
        opened = False  # a lab never reached is said at once, not retried for a budget
        cut: float | None = None  # when the stream was last cut off, until a line comes
        tries = 0
        while True:
            headers = {"Accept": "text/event-stream", **_session_headers(session_id)}
            if after:
                headers["Last-Event-ID"] = str(after)
            call = Call("GET", path, headers=headers, hold=STREAM_SILENCE, stream=True,
                        replayable=True)  # fmt: skip
            try:
                response = yield from self.exchange(call)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    if opened:
                        raise UnexpectedResponse(
                            f"GET {path}: the lab stopped streaming the log "
                            f"(answered {content_type or 'no content type'})",
                            response,
                        )
                    log.info("this lab does not stream logs; reading them again instead")
                    self.streams = False
                    return False
                opened = True
                while (event := (yield NextEvent(response))) is not None:
                    if event.event == "end":
                        return True
                    if event.event not in ("", "message") or not event.id:
                        continue  # a kind of event this client does not know
                    number, line = _log_event(path, event, response)
                    if number <= after:
                        continue
                    yield Emit(line)
                    after, cut, tries = number, None, 0
            except (httpx.TransportError, TransportError) as exc:
                if not opened:
                    raise
                cut = time.monotonic() if cut is None else cut
                delay = min(0.1 * 2**tries, 2.0)
                if not self._may_wait(cut, delay):
                    if isinstance(exc, TransportError):
                        raise
                    raise TransportError(f"GET {self.options.url}{path}: {_name(exc)}") from exc
                log.info("the log's stream was cut off (%s); opening it again", _name(exc))
                tries += 1
                yield Sleep(delay)
                continue
            # ended without its end event (an API replica stopping): open it again
            cut = time.monotonic() if cut is None else cut
            if not self._may_wait(cut, 0.1):
                raise TransportError(f"GET {self.options.url}{path}: the log's stream ended "
                                     "early, again and again")  # fmt: skip
            tries += 1
            yield Sleep(min(0.1 * 2 ** (tries - 1), 2.0))

    def polled_log(
        self, fpga_id: int, job_id: str, follow: bool, session_id: str | None
    ) -> Flow[None]:
        """Emit the job's log line by line; with ``follow``, read it again until the job
        has finished (its status is read before each read of the log, so the read after
        the job finished has every line)."""
        seen = 0
        pause = FIRST_POLL
        while True:
            finished = True
            if follow:
                finished = (yield from self.job(fpga_id, job_id, session_id)).finished
            lines = _lines((yield from self.log_text(fpga_id, job_id, session_id)))
            for line in lines[seen:]:
                yield Emit(line)
            if len(lines) > seen:
                seen, pause = len(lines), FIRST_POLL
            if finished:
                return
            yield Sleep(pause)
            pause = min(pause * 1.5, LAST_POLL)

    # Sessions -----------------------------------------------------------------------------

    def session(self, fpga_id: int) -> Flow[Session]:
        return Session.parse((yield from self.get(f"/fpga/{fpga_id}/session")))

    def release(self, fpga_id: int, session_id: str | None) -> Flow[JobAccepted]:
        response = yield from self.post(f"/fpga/{fpga_id}/session/release", session_id=session_id)
        return JobAccepted.parse(_body(response))

    def reset(self, fpga_id: int, session_id: str | None) -> Flow[JobAccepted]:
        response = yield from self.post(f"/fpga/{fpga_id}/reset", session_id=session_id)
        return JobAccepted.parse(_body(response))

    def renew(
        self, fpga_id: int, seconds: int | None, session_id: str | None
    ) -> Flow[tuple[Session, datetime]]:
        """The renewed session and the lab's clock when it renewed it."""
        body = None if seconds is None else {"seconds": seconds}
        response = yield from self.post(
            f"/fpga/{fpga_id}/session/renew", body, session_id=session_id, replayable=True
        )
        return Session.parse(_body(response)), server_now(response)

    # Board sessions -----------------------------------------------------------------------

    def reserve(
        self, fpga_id: int | None, design: Design, filename: str | None
    ) -> Flow[tuple[JobAccepted, datetime]]:
        if fpga_id is None:
            return (yield from self.submit_anywhere(design, filename, RESET_PATIENCE))
        return (yield from self.submit_when_free(fpga_id, design, filename, RESET_PATIENCE))

    def built(
        self,
        accepted: JobAccepted,
        at: datetime,
        timeout: float | None,
        renew_within: float,
        op_timeout: float | None,
    ) -> Flow[SessionState]:
        """Wait for a reservation's build; its session once the board is reserved.
        A failed build raises ``JobFailed`` (the caller then runs ``abandon``)."""
        job = yield from self.wait(
            accepted.fpga_id, accepted.job_id, timeout, check=True, session_id=accepted.session_id
        )
        state = SessionState(
            accepted.fpga_id, accepted.session_id or "", job, None, None, renew_within, op_timeout
        )
        if accepted.expires_at is not None:
            state.learn_expiry(accepted.expires_at, at)
        return state

    def attach(
        self, fpga_id: int, session_id: str | None, renew_within: float, op_timeout: float | None
    ) -> Flow[SessionState]:
        """A state for the board's session now (checked to be ``session_id`` if given)."""
        response = yield from self.exchange(
            Call("GET", f"/fpga/{fpga_id}/session", replayable=True)
        )
        session = Session.parse(_body(response))
        if session_id is not None and session.session_id != session_id:
            raise SessionMismatch(
                403,
                "session_mismatch",
                f"FPGA {fpga_id}'s session is not {session_id}: that session has ended.",
                response,
            )
        state = SessionState(
            fpga_id, session.session_id, None, None, None, renew_within, op_timeout
        )
        state.learn_expiry(session.expires_at, server_now(response))
        state.length = None  # not known from one look: renew only near the end
        return state

    def abandon(self, accepted: JobAccepted, timeout: float = CLEANUP_TIMEOUT) -> Flow[None]:
        """Give back what a reservation that will not be used holds: cancel its build if
        no worker has taken it; else wait for the build to end, then release the board."""
        fpga_id, sid = accepted.fpga_id, accepted.session_id
        try:
            yield from self.cancel(fpga_id, accepted.job_id, sid)
            log.info("FPGA %d: build %s cancelled", fpga_id, accepted.job_id)
            return
        except JobNotCancellable:
            pass  # taken by a worker (or finished): the board is freed once it settles
        yield from self.wait(fpga_id, accepted.job_id, timeout, check=False, session_id=sid)
        try:
            yield from self.release(fpga_id, sid)
            log.info("FPGA %d: released", fpga_id)
        except (NoActiveSession, SessionMismatch):
            pass  # the session ended on its own (a failed check, expiry)

    def keep(self, state: SessionState) -> Flow[None]:
        """Renew the session if it ends within ``renew_within`` (at most a third of its
        length) — once at its maximum lifetime, never again."""
        if state.released or state.renew_within <= 0 or state.ends is None:
            return
        margin = state.renew_within
        if state.length:
            margin = min(margin, state.length / 3)
        if state.ends - time.monotonic() > margin:
            return
        yield from self.renew_session(state, None)

    def renew_session(self, state: SessionState, seconds: int | None) -> Flow[Session]:
        try:
            session, now = yield from self.renew(state.fpga_id, seconds, state.session_id)
        except SessionRenewLimit:
            state.renew_within = 0  # it ends at its maximum lifetime, whatever we do
            raise
        state.learn_expiry(session.expires_at, now)
        return session

    def board_run(
        self,
        state: SessionState,
        ops: Op | Sequence[Op],
        check: bool,
        trace: bool = False,
        signals: Sequence[str] | None = None,
    ) -> Flow[RunResult]:
        """One run job on a session's board, waited for; its result. ``trace``: with its
        waveform (``.waveform``), or ``TraceUnavailable`` saying why there is none."""
        if state.released:
            raise RuntimeError(f"the session on FPGA {state.fpga_id} has been released")
        yield from self.keep(state)
        sid = state.session_id
        timeout = state.op_timeout
        started = time.monotonic()
        hold = MAX_WAIT if timeout is None else max(MIN_WAIT, min(MAX_WAIT, timeout))
        wait = hold if self.waits else None
        accepted = yield from self.run(state.fpga_id, ops, sid, wait=wait, trace=trace,
                                       signals=signals)  # fmt: skip
        state.runs.append(accepted.job_id)
        fpga, job_id = state.fpga_id, accepted.job_id
        result = accepted.result  # answered with it: one request for the whole op
        if result is None and not accepted.status.finished:  # past the wait, or an older lab
            left = None if timeout is None else timeout - (time.monotonic() - started)
            result = yield from self.finished_result(fpga, job_id, left, sid)
        if result is not None and result.ok and trace:
            return (yield from self.traced_result(fpga, job_id, result, sid))
        if result is not None and result.ok:
            return result
        job = yield from self.job(fpga, job_id, sid)  # what ended it, for the error
        if check:
            raise JobFailed(job, [], result)
        return result or RunResult(ok=False, error=job.error)

    def traced_result(
        self, fpga_id: int, job_id: str, result: RunResult, session_id: str | None
    ) -> Flow[RunResult]:
        """A traced run's result with its waveform; ``TraceUnavailable`` if it made none."""
        info = result.trace
        if info is None:  # a lab that does not know traces ignored nothing: it refuses them
            raise UnexpectedResponse("result.trace: missing from a traced run's result")
        if not info.ok:
            raise TraceUnavailable(info.error or "the lab made no waveform", result)
        waveform = yield from self.waveform(fpga_id, job_id, session_id)
        return dataclasses.replace(result, waveform=waveform, job_id=job_id)

    def board_memory_map(self, state: SessionState) -> Flow[MemoryMap]:
        if state.memory_map is None:
            state.memory_map = yield from self.memory_map(state.fpga_id)
        return state.memory_map

    def board_release(
        self, state: SessionState, wait: bool, timeout: float | None
    ) -> Flow[JobAccepted | None]:
        """End the session (once; again is a no-op). A session that has already ended
        (expired, reset by someone else) is not an error: it is released."""
        if not state.released:
            try:
                state.release_job = yield from self.release(state.fpga_id, state.session_id)
            except (NoActiveSession, SessionMismatch):
                state.release_job = None
            state.released = True
        if wait and state.release_job is not None:
            yield from self.wait(
                state.fpga_id,
                state.release_job.job_id,
                timeout,
                check=True,
                session_id=state.session_id,
            )
        return state.release_job


def _seconds(value: float) -> str:
    """Seconds as a query parameter: ``30``, ``0.5``."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _resetting(board: Board) -> bool:
    """Being reset by a live worker: idle (or in error) within seconds."""
    return (
        board.state is BoardState.RESETTING
        and board.current_job_id is not None
        and board.worker is not None
    )


def _log_event(path: str, event: Any, response: httpx.Response) -> tuple[int, str]:
    """A live log's line event: its number (``id:``) and its text (``data:``, JSON)."""
    try:
        number, line = int(event.id), json.loads(event.data)
    except ValueError:
        number, line = -1, None
    if number < 0 or not isinstance(line, str):
        raise UnexpectedResponse(f"GET {path}: a line of the log's stream is malformed", response)
    return number, line


def _lines(text: str) -> list[str]:
    """A log's lines: split at newlines only (a log is untrusted text; other breaks in
    it are characters of its lines)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponse(
            f"{response.request.method} {response.request.url.path}: the answer is not JSON",
            response,
        ) from None


def _name(exc: BaseException) -> str:
    return type(exc).__name__


#: What a session's ``read``/``write``/``transact`` take as ``trace``: False (none), True
#: (the waveform in memory) or a path to write it to as well.
TraceArg = bool | str | os.PathLike[str]


def traced(result: RunResult, trace: TraceArg) -> Traced:
    """A traced read's or write's answer; the waveform also written to ``trace`` when it
    is a path (replacing a file there)."""
    assert result.waveform is not None and result.trace is not None and result.job_id
    path = None
    if not isinstance(trace, bool):
        path = Path(trace)
        path.write_bytes(result.waveform)
    return Traced(result.data, result.waveform, result.trace, result.job_id, path)
