"""``Client``: the lab's REST API from synchronous Python, and ``BoardSession``, a board
reserved through it. The protocol is ``_protocol``'s; this module only does the I/O
(``httpx.Client``, ``time.sleep``)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx
from httpx_sse import EventSource, ServerSentEvent

from fpgalab.client._models import (
    AuditEntry,
    Board,
    Health,
    Job,
    JobAccepted,
    MemoryMap,
    PoolJob,
    Read,
    Region,
    RunResult,
    Session,
    Traced,
    Write,
)
from fpgalab.client._protocol import (
    BUILD_TIMEOUT,
    DEFAULT_RETRY_BUDGET,
    DEFAULT_TIMEOUT,
    OP_TIMEOUT,
    RENEW_WITHIN,
    Call,
    Design,
    Emit,
    Flow,
    NextEvent,
    Op,
    Options,
    Pool,
    Protocol,
    SessionState,
    Sleep,
    TraceArg,
    traced,
)

log = logging.getLogger("fpgalab.client")

T = TypeVar("T")


class Client:
    """The lab's REST API, synchronously. ``url`` and ``api_key`` default to
    ``FPGALAB_URL`` (else ``http://127.0.0.1:8000``) and ``FPGALAB_API_KEY``; the key
    goes in the ``X-API-Key`` header only. ``timeout`` bounds each request (seconds);
    ``retry_budget`` is how long one call may spend waiting to be retried after
    ``429``/``503`` or a lost answer (0: never retried). Use it as a context manager, or
    call ``close()``, to close its connections.

    ``transport`` is httpx's (a test's ``httpx.MockTransport``, a proxy's, ...)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.options = Options.resolve(url, api_key, timeout, retry_budget)
        self._protocol = Protocol(self.options)
        self._http = httpx.Client(
            base_url=self.options.url,
            headers=self.options.headers(),
            timeout=timeout,
            verify=verify,
            transport=transport,
            # under the 5 s after which uvicorn (and most servers) drop idle connections
            limits=httpx.Limits(keepalive_expiry=2.0),
        )

    @property
    def url(self) -> str:
        return self.options.url

    def __repr__(self) -> str:
        return f"<Client {self.url} key={'set' if self.options.api_key else 'none'}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # I/O ------------------------------------------------------------------------------------

    def _send(self, call: Call) -> httpx.Response:
        timeout: httpx.Timeout | float = self.options.timeout
        if call.hold:
            timeout = httpx.Timeout(self.options.timeout, read=self.options.timeout + call.hold)
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            files=call.files,
            data=call.data,
            headers=call.headers,
            timeout=timeout,
        )
        response = self._http.send(request, stream=call.stream)
        if call.stream and response.is_error:
            response.read()  # the error's code is in its body
        return response

    def _steps(self, flow: Flow[T]) -> Generator[Any, None, T]:
        """Drive ``flow``: yield what it emits; its result is the StopIteration's value.
        Every streamed answer it opened is closed when it ends (or is dropped)."""
        reply: Any = None
        error: BaseException | None = None
        streams: dict[httpx.Response, Iterator[ServerSentEvent]] = {}
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as done:
                    value: T = done.value
                    return value
                reply, error = None, None
                if isinstance(step, Call):
                    try:
                        reply = self._send(step)
                    except httpx.TransportError as exc:
                        error = exc
                    else:
                        if step.stream:
                            streams[reply] = EventSource(reply).iter_sse()
                elif isinstance(step, NextEvent):
                    try:
                        reply = next(streams[step.response], None)
                    except httpx.TransportError as exc:
                        error = exc
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, Emit):
                    yield step.value
        finally:
            for response in streams:
                response.close()

    def _drive(self, flow: Flow[T]) -> T:
        steps = self._steps(flow)
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        raise AssertionError("a flow emitted where nothing iterates")  # a bug of ours

    def _cleanup(self, flow: Flow[Any], failure: BaseException, what: str) -> None:
        """Run a cleanup after ``failure``; if it fails too, say so on ``failure`` (which
        goes on). A second Ctrl-C stops the cleanup."""
        try:
            self._drive(flow)
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)
            failure.add_note(f"fpgalab: {what} failed too: {exc}")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Any call of the API (``path`` from the lab's root), with the client's key,
        retries and typed errors: for what has no method here."""
        replayable = method.upper() in ("GET", "HEAD")
        call = Call(
            method.upper(),
            path,
            params=params,
            json=json,
            headers=dict(headers or {}),
            replayable=replayable,
        )
        return self._drive(self._protocol.exchange(call))

    # The lab --------------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health`` (a degraded lab's ``503`` is an answer here, not an error)."""
        return self._drive(self._protocol.health())

    def boards(self) -> list[Board]:
        return self._drive(self._protocol.boards())

    def board(self, fpga_id: int) -> Board:
        return self._drive(self._protocol.board(fpga_id))

    def memory_map(self, fpga_id: int) -> MemoryMap:
        """The ``csr.json`` of what is on the board now (the base SoC while idle)."""
        return self._drive(self._protocol.memory_map(fpga_id))

    def maintenance(self, fpga_id: int, reason: str | None = None) -> Board:
        """Take a board out of service (admins)."""
        return self._drive(self._protocol.maintenance(fpga_id, reason))

    def online(self, fpga_id: int) -> Board:
        """End a board's maintenance (admins)."""
        return self._drive(self._protocol.online(fpga_id))

    def audit(
        self,
        *,
        fpga_id: int | None = None,
        caller: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> list[AuditEntry]:
        """The audit trail, newest first (admins)."""
        return self._drive(self._protocol.audit(fpga_id, caller, limit, before))

    # Jobs -----------------------------------------------------------------------------------

    def submit(
        self,
        fpga_id: int,
        design: Design,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobAccepted:
        """Queue a build of ``design`` (a path, or bytes with ``filename``) on a board;
        opens a session (``.session_id``). Returns at once: ``wait`` for the build."""
        flow = self._protocol.submit(fpga_id, design, filename, idempotency_key)
        return self._drive(flow)[0]

    def run(
        self,
        fpga_id: int,
        ops: Op | Sequence[Op],
        *,
        session_id: str | None = None,
        idempotency_key: str | None = None,
        trace: bool = False,
        signals: Sequence[str] | None = None,
    ) -> JobAccepted:
        """Queue a run job: one ``Read``/``Write`` (or the API's op body), or a list of
        them (one ``ops`` job). Returns at once: ``wait``, then ``result``. ``trace``: the
        board's logic analyzer captures the run (``signals``: which; default all); the
        VCD is then ``waveform(fpga_id, job_id)``."""
        flow = self._protocol.run(
            fpga_id, ops, session_id, idempotency_key, trace=trace, signals=signals
        )
        return self._drive(flow)

    def job(self, fpga_id: int, job_id: str) -> Job:
        return self._drive(self._protocol.job(fpga_id, job_id))

    def wait(
        self,
        fpga_id: int,
        job_id: str,
        timeout: float | None = None,
        *,
        check: bool = True,
        session_id: str | None = None,
    ) -> Job:
        """The job once it has finished (``JobTimeout`` after ``timeout`` seconds; None:
        no limit). With ``check``, a failed or cancelled job raises ``JobFailed``."""
        return self._drive(self._protocol.wait(fpga_id, job_id, timeout, check, session_id))

    def result(self, fpga_id: int, job_id: str, *, session_id: str | None = None) -> RunResult:
        """A finished job's result (``JobNotComplete`` before)."""
        return self._drive(self._protocol.result(fpga_id, job_id, session_id))

    def waveform(self, fpga_id: int, job_id: str, *, session_id: str | None = None) -> bytes:
        """A traced run's waveform, VCD (``WaveformNotFound``: the run made none, and the
        message says why)."""
        return self._drive(self._protocol.waveform(fpga_id, job_id, session_id))

    def logs(
        self, fpga_id: int, job_id: str, *, follow: bool = False, session_id: str | None = None
    ) -> Iterator[str]:
        """The job's log, line by line (no newlines). With ``follow``, lines are yielded
        as the job writes them, until it has finished. A log is untrusted text: escape it
        before showing it on a terminal."""
        yield from self._steps(self._protocol.log_lines(fpga_id, job_id, follow, session_id))

    def cancel(self, fpga_id: int, job_id: str, *, session_id: str | None = None) -> None:
        """Cancel a job no worker has taken yet (a cancelled build frees the board)."""
        self._drive(self._protocol.cancel(fpga_id, job_id, session_id))

    # Sessions -------------------------------------------------------------------------------

    def session(self, fpga_id: int) -> Session:
        """The board's session (``NoActiveSession`` if none)."""
        return self._drive(self._protocol.session(fpga_id))

    def renew(
        self, fpga_id: int, seconds: int | None = None, *, session_id: str | None = None
    ) -> Session:
        return self._drive(self._protocol.renew(fpga_id, seconds, session_id))[0]

    def release(self, fpga_id: int, *, session_id: str | None = None) -> JobAccepted:
        """End the board's session: queues the reset that frees it."""
        return self._drive(self._protocol.release(fpga_id, session_id))

    def reset(self, fpga_id: int, *, session_id: str | None = None) -> JobAccepted:
        return self._drive(self._protocol.reset(fpga_id, session_id))

    def reserve(
        self,
        fpga_id: int | None,
        design: Design,
        *,
        filename: str | None = None,
        platform: str | None = None,
        tags: Sequence[str] = (),
        priority: int | None = None,
        build_timeout: float | None = BUILD_TIMEOUT,
        op_timeout: float | None = OP_TIMEOUT,
        renew_within: float = RENEW_WITHIN,
    ) -> BoardSession:
        """Submit ``design`` to board ``fpga_id`` — or, None, to the lab's pool of boards
        of ``platform`` with ``tags`` (any board if neither; ``priority`` its place in the
        queue): the first to be free takes it — wait for its build, and return the board's
        session; use it in a ``with`` block, which releases the board at its end whatever
        happens (exceptions, Ctrl-C).

        A build that fails raises ``JobFailed`` (with the log's tail), and the board is
        released. Interrupted while the build waits or runs, it cancels the build or, once
        a worker has it, waits for it (up to 2 minutes; a second Ctrl-C stops waiting) and
        releases the board. ``build_timeout`` bounds the wait for a board and the build
        together (``NoIdleBoard`` if no board took it in time, ``JobTimeout`` if the build
        did not end); ``op_timeout`` bounds each read, write and transact;
        ``renew_within``: see ``BoardSession``."""
        if fpga_id is None and self._protocol.pools:
            pool = Pool(platform, tuple(tags), priority)
            job = self._drive(self._protocol.pool_reserve(design, filename, pool))
            if job is not None:
                return self._reserve_pooled(job, build_timeout, op_timeout, renew_within)
        accepted, at = self._drive(self._protocol.reserve(fpga_id, design, filename))
        try:
            state = self._drive(
                self._protocol.built(accepted, at, build_timeout, renew_within, op_timeout)
            )
        except BaseException as exc:
            what = f"giving back FPGA {accepted.fpga_id}"
            self._cleanup(self._protocol.abandon(accepted), exc, what)
            raise
        return BoardSession(self, state)

    def _reserve_pooled(
        self,
        job: PoolJob,
        build_timeout: float | None,
        op_timeout: float | None,
        renew_within: float,
    ) -> BoardSession:
        started = time.monotonic()
        try:
            placed = self._drive(self._protocol.placed(job, build_timeout))
            accepted = self._protocol.placed_build(placed)
            left = None if build_timeout is None else build_timeout - (time.monotonic() - started)
            now = datetime.now(UTC)
            state = self._drive(self._protocol.built(accepted, now, left, renew_within, op_timeout))
        except BaseException as exc:
            self._cleanup(
                self._protocol.abandon_pool(job), exc, f"giving back pool job {job.job_id}"
            )
            raise
        return BoardSession(self, state)

    def submit_to_pool(
        self,
        design: Design,
        *,
        filename: str | None = None,
        platform: str | None = None,
        tags: Sequence[str] = (),
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> PoolJob:
        """Queue ``design`` for the first free board of ``platform`` with ``tags``
        (``POST /submit``): placed at once if one is free (``.fpga_id``), else waiting
        (``.queue_position``, ``.eta_seconds``). ``NoMatchingBoard`` if no board of the lab
        can ever take it."""
        pool = Pool(platform, tuple(tags), priority)
        return self._drive(self._protocol.pool_submit(design, filename, pool, idempotency_key))

    def pool_job(self, job_id: str, *, wait: float | None = None) -> PoolJob:
        """A job by its id alone (``GET /jobs/{job_id}``): a pool job's board once placed,
        its queue position and ETA. With ``wait`` (seconds, at most 30), the lab answers
        once it has finished or, waiting for a board, once it is placed."""
        return self._drive(self._protocol.pool_job(job_id, wait))

    def cancel_pool_job(self, job_id: str) -> None:
        """Cancel a job by its id alone: a pool job still waiting never runs; a placed one
        is cancelled on its board if no worker has taken it (``JobNotCancellable``)."""
        self._drive(self._protocol.cancel_anywhere(job_id))

    def attach(
        self,
        fpga_id: int,
        session_id: str | None = None,
        *,
        op_timeout: float | None = OP_TIMEOUT,
        renew_within: float = RENEW_WITHIN,
    ) -> BoardSession:
        """The board's current session as a ``BoardSession`` (e.g. one a previous
        process opened); if ``session_id`` is given, it must be that session."""
        flow = self._protocol.attach(fpga_id, session_id, renew_within, op_timeout)
        return BoardSession(self, self._drive(flow))


class BoardSession:
    """A board reserved for this caller, its design on it. Its calls carry the session
    (``X-Session-ID``); each read, write or transact is one run job, waited for.

    The session is renewed before a call when it would end within ``renew_within``
    seconds (at most a third of its length); a block that makes no call for longer than
    the session lasts (30 min by default) calls ``renew()`` itself.

    As a context manager it releases the board on exit, also on an exception or Ctrl-C
    (the exception goes on; a failed release is added to it as a note)."""

    def __init__(self, client: Client, state: SessionState) -> None:
        self.client = client
        self._state = state
        self._protocol = client._protocol

    def __repr__(self) -> str:
        ended = " released" if self.released else ""
        return f"<BoardSession FPGA {self.fpga_id} session {self.session_id}{ended}>"

    @property
    def fpga_id(self) -> int:
        return self._state.fpga_id

    @property
    def session_id(self) -> str:
        return self._state.session_id

    @property
    def build(self) -> Job | None:
        """The build job that opened the session (None for an attached session)."""
        return self._state.build

    @property
    def released(self) -> bool:
        return self._state.released

    @property
    def runs(self) -> list[str]:
        """The ids of the run jobs this session has queued, oldest first (its reads,
        writes and transacts)."""
        return list(self._state.runs)

    @property
    def release_job(self) -> JobAccepted | None:
        """The reset job the release queued (wait for it to see the board idle)."""
        return self._state.release_job

    def __enter__(self) -> BoardSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.release()
            return
        what = f"releasing FPGA {self.fpga_id}"
        self.client._cleanup(self._protocol.board_release(self._state, False, None), exc, what)

    def _address(self, address: int | str) -> int:
        return address if isinstance(address, int) else self.memory_map().address(address)

    @overload
    def read(
        self,
        address: int | str,
        length: int = 1,
        *,
        trace: Literal[False] = False,
        signals: Sequence[str] | None = None,
    ) -> list[int]: ...
    @overload
    def read(
        self,
        address: int | str,
        length: int = 1,
        *,
        trace: Literal[True] | str | PathLike[str],
        signals: Sequence[str] | None = None,
    ) -> Traced: ...
    def read(
        self,
        address: int | str,
        length: int = 1,
        *,
        trace: TraceArg = False,
        signals: Sequence[str] | None = None,
    ) -> list[int] | Traced:
        """``length`` words from ``address`` (a byte address, or a CSR or region name).
        ``trace``: the board's logic analyzer captures the read; a ``Traced`` comes back
        (``.data``, ``.waveform`` the VCD), the VCD also written to ``trace`` if it is a
        path. ``signals``: which to show (default all). No waveform: ``TraceUnavailable``."""
        op = Read(self._address(address), length)
        flow = self._protocol.board_run(self._state, op, True, bool(trace), signals)
        result = self.client._drive(flow)
        return traced(result, trace) if trace else result.data

    @overload
    def write(
        self,
        address: int | str,
        data: int | Sequence[int],
        *,
        trace: Literal[False] = False,
        signals: Sequence[str] | None = None,
    ) -> None: ...
    @overload
    def write(
        self,
        address: int | str,
        data: int | Sequence[int],
        *,
        trace: Literal[True] | str | PathLike[str],
        signals: Sequence[str] | None = None,
    ) -> Traced: ...
    def write(
        self,
        address: int | str,
        data: int | Sequence[int],
        *,
        trace: TraceArg = False,
        signals: Sequence[str] | None = None,
    ) -> Traced | None:
        """Write a word, or words at consecutive word addresses, from ``address``;
        ``trace`` and ``signals`` as for ``read``."""
        words = [data] if isinstance(data, int) else list(data)
        op = Write(self._address(address), words)
        flow = self._protocol.board_run(self._state, op, True, bool(trace), signals)
        result = self.client._drive(flow)
        return traced(result, trace) if trace else None

    def transact(
        self,
        ops: Sequence[Op],
        *,
        check: bool = True,
        trace: TraceArg = False,
        signals: Sequence[str] | None = None,
    ) -> RunResult:
        """Run ``ops`` in order in one job: ``.data`` every read's words, ``.results`` one
        per op. The first bus error stops the list: ``JobFailed`` (its ``.result`` says
        which op), or, without ``check``, the result with ``ok`` false. ``trace``: the
        result's ``.waveform`` holds the run's VCD (also written to ``trace`` if a path)."""
        flow = self._protocol.board_run(self._state, list(ops), check, bool(trace), signals)
        result = self.client._drive(flow)
        if trace and result.waveform is not None and not isinstance(trace, bool):
            Path(trace).write_bytes(result.waveform)
        return result

    def memory_map(self) -> MemoryMap:
        """The board's ``csr.json`` (read once per session)."""
        return self.client._drive(self._protocol.board_memory_map(self._state))

    def region(self, name: str) -> Region:
        """A memory region by name, e.g. ``region("user").base``."""
        return self.memory_map().region(name)

    def csr(self, name: str) -> int:
        """A CSR's byte address by name, e.g. ``csr("ctrl_scratch")``."""
        return self.memory_map().csr(name)

    def logs(self, *, follow: bool = False) -> Iterator[str]:
        """The build's log (see ``Client.logs``)."""
        if self.build is None:
            return iter(())
        return self.client.logs(
            self.fpga_id, self.build.job_id, follow=follow, session_id=self.session_id
        )

    def renew(self, seconds: int | None = None) -> Session:
        """Extend the session by ``seconds`` (default: the lab's session length), never
        past its maximum lifetime (``SessionRenewLimit`` at it)."""
        return self.client._drive(self._protocol.renew_session(self._state, seconds))

    def release(self, *, wait: bool = False, timeout: float | None = None) -> JobAccepted | None:
        """End the session (a second call does nothing); with ``wait``, return once the
        board is idle again. The reset job it queued, or None if the session had already
        ended (expired, or reset by someone else)."""
        return self.client._drive(self._protocol.board_release(self._state, wait, timeout))
