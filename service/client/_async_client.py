"""``AsyncClient``: the twin of ``Client`` for asyncio, and ``AsyncBoardSession``. The
same protocol (``_protocol``), driven with ``httpx.AsyncClient`` and ``asyncio.sleep``.
Cancelling a task is its Ctrl-C: a reservation or session it interrupts is given back."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
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


class AsyncClient:
    """``Client`` for asyncio: the same arguments, the same calls, each awaited (``logs``
    is an async iterator; ``reserve`` is awaited or used with ``async with``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = Options.resolve(url, api_key, timeout, retry_budget)
        self._protocol = Protocol(self.options)
        self._http = httpx.AsyncClient(
            base_url=self.options.url,
            headers=self.options.headers(),
            timeout=timeout,
            verify=verify,
            transport=transport,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )

    @property
    def url(self) -> str:
        return self.options.url

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url} key={'set' if self.options.api_key else 'none'}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # I/O ------------------------------------------------------------------------------------

    async def _send(self, call: Call) -> httpx.Response:
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
        response = await self._http.send(request, stream=call.stream)
        if call.stream and response.is_error:
            await response.aread()  # the error's code is in its body
        return response

    async def _step(
        self, step: Call | NextEvent | Sleep, streams: _Streams
    ) -> tuple[Any, BaseException | None]:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None, None
        try:
            if isinstance(step, NextEvent):
                return await anext(streams[step.response], None), None
            response = await self._send(step)
        except httpx.TransportError as exc:
            return None, exc
        if step.stream:
            streams[response] = EventSource(response).aiter_sse()
        return response, None

    async def _drive(self, flow: Flow[T]) -> T:
        reply: Any = None
        error: BaseException | None = None
        streams: _Streams = {}
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as done:
                    result: T = done.value
                    return result
                if isinstance(step, Emit):
                    raise AssertionError("a flow emitted where nothing iterates")  # a bug of ours
                reply, error = await self._step(step, streams)
        finally:
            await _close(streams)

    async def _iterate(self, flow: Flow[Any]) -> AsyncIterator[Any]:
        reply: Any = None
        error: BaseException | None = None
        streams: _Streams = {}
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration:
                    return
                if isinstance(step, Emit):
                    reply, error = None, None
                    yield step.value
                else:
                    reply, error = await self._step(step, streams)
        finally:
            await _close(streams)

    async def _cleanup(self, flow: Flow[Any], failure: BaseException, what: str) -> None:
        """Run a cleanup after ``failure``; if it fails too, say so on ``failure``."""
        try:
            await self._drive(flow)
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)
            failure.add_note(f"fpgalab: {what} failed too: {exc}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        replayable = method.upper() in ("GET", "HEAD")
        call = Call(
            method.upper(),
            path,
            params=params,
            json=json,
            headers=dict(headers or {}),
            replayable=replayable,
        )
        return await self._drive(self._protocol.exchange(call))

    # The lab --------------------------------------------------------------------------------

    async def health(self) -> Health:
        return await self._drive(self._protocol.health())

    async def boards(self) -> list[Board]:
        return await self._drive(self._protocol.boards())

    async def board(self, fpga_id: int) -> Board:
        return await self._drive(self._protocol.board(fpga_id))

    async def memory_map(self, fpga_id: int) -> MemoryMap:
        return await self._drive(self._protocol.memory_map(fpga_id))

    async def maintenance(self, fpga_id: int, reason: str | None = None) -> Board:
        return await self._drive(self._protocol.maintenance(fpga_id, reason))

    async def online(self, fpga_id: int) -> Board:
        return await self._drive(self._protocol.online(fpga_id))

    async def audit(
        self,
        *,
        fpga_id: int | None = None,
        caller: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> list[AuditEntry]:
        return await self._drive(self._protocol.audit(fpga_id, caller, limit, before))

    # Jobs -----------------------------------------------------------------------------------

    async def submit(
        self,
        fpga_id: int,
        design: Design,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobAccepted:
        flow = self._protocol.submit(fpga_id, design, filename, idempotency_key)
        return (await self._drive(flow))[0]

    async def run(
        self,
        fpga_id: int,
        ops: Op | Sequence[Op],
        *,
        session_id: str | None = None,
        idempotency_key: str | None = None,
        trace: bool = False,
        signals: Sequence[str] | None = None,
    ) -> JobAccepted:
        flow = self._protocol.run(
            fpga_id, ops, session_id, idempotency_key, trace=trace, signals=signals
        )
        return await self._drive(flow)

    async def job(self, fpga_id: int, job_id: str) -> Job:
        return await self._drive(self._protocol.job(fpga_id, job_id))

    async def wait(
        self,
        fpga_id: int,
        job_id: str,
        timeout: float | None = None,
        *,
        check: bool = True,
        session_id: str | None = None,
    ) -> Job:
        return await self._drive(self._protocol.wait(fpga_id, job_id, timeout, check, session_id))

    async def result(
        self, fpga_id: int, job_id: str, *, session_id: str | None = None
    ) -> RunResult:
        return await self._drive(self._protocol.result(fpga_id, job_id, session_id))

    async def waveform(self, fpga_id: int, job_id: str, *, session_id: str | None = None) -> bytes:
        return await self._drive(self._protocol.waveform(fpga_id, job_id, session_id))

    async def logs(
        self, fpga_id: int, job_id: str, *, follow: bool = False, session_id: str | None = None
    ) -> AsyncIterator[str]:
        async for line in self._iterate(
            self._protocol.log_lines(fpga_id, job_id, follow, session_id)
        ):
            yield line

    async def cancel(self, fpga_id: int, job_id: str, *, session_id: str | None = None) -> None:
        await self._drive(self._protocol.cancel(fpga_id, job_id, session_id))

    # Sessions -------------------------------------------------------------------------------

    async def session(self, fpga_id: int) -> Session:
        return await self._drive(self._protocol.session(fpga_id))

    async def renew(
        self, fpga_id: int, seconds: int | None = None, *, session_id: str | None = None
    ) -> Session:
        return (await self._drive(self._protocol.renew(fpga_id, seconds, session_id)))[0]

    async def release(self, fpga_id: int, *, session_id: str | None = None) -> JobAccepted:
        return await self._drive(self._protocol.release(fpga_id, session_id))

    async def reset(self, fpga_id: int, *, session_id: str | None = None) -> JobAccepted:
        return await self._drive(self._protocol.reset(fpga_id, session_id))

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
    ) -> AsyncReservation:
        """``Client.reserve``: ``async with alab.reserve(...) as board:``, or
        ``board = await alab.reserve(...)``."""
        pool = Pool(platform, tuple(tags), priority)
        return AsyncReservation(
            lambda: self._reserve(
                fpga_id, design, filename, pool, build_timeout, op_timeout, renew_within
            )
        )

    async def _reserve(
        self,
        fpga_id: int | None,
        design: Design,
        filename: str | None,
        pool: Pool,
        build_timeout: float | None,
        op_timeout: float | None,
        renew_within: float,
    ) -> AsyncBoardSession:
        if fpga_id is None and self._protocol.pools:
            job = await self._drive(self._protocol.pool_reserve(design, filename, pool))
            if job is not None:
                return await self._reserve_pooled(job, build_timeout, op_timeout, renew_within)
        accepted, at = await self._drive(self._protocol.reserve(fpga_id, design, filename))
        try:
            state = await self._drive(
                self._protocol.built(accepted, at, build_timeout, renew_within, op_timeout)
            )
        except BaseException as exc:
            what = f"giving back FPGA {accepted.fpga_id}"
            await self._cleanup(self._protocol.abandon(accepted), exc, what)
            raise
        return AsyncBoardSession(self, state)

    async def _reserve_pooled(
        self,
        job: PoolJob,
        build_timeout: float | None,
        op_timeout: float | None,
        renew_within: float,
    ) -> AsyncBoardSession:
        started = time.monotonic()
        try:
            placed = await self._drive(self._protocol.placed(job, build_timeout))
            accepted = self._protocol.placed_build(placed)
            left = None if build_timeout is None else build_timeout - (time.monotonic() - started)
            now = datetime.now(UTC)
            state = await self._drive(
                self._protocol.built(accepted, now, left, renew_within, op_timeout)
            )
        except BaseException as exc:
            what = f"giving back pool job {job.job_id}"
            await self._cleanup(self._protocol.abandon_pool(job), exc, what)
            raise
        return AsyncBoardSession(self, state)

    async def submit_to_pool(
        self,
        design: Design,
        *,
        filename: str | None = None,
        platform: str | None = None,
        tags: Sequence[str] = (),
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> PoolJob:
        """``Client.submit_to_pool``."""
        pool = Pool(platform, tuple(tags), priority)
        return await self._drive(
            self._protocol.pool_submit(design, filename, pool, idempotency_key)
        )

    async def pool_job(self, job_id: str, *, wait: float | None = None) -> PoolJob:
        """``Client.pool_job``."""
        return await self._drive(self._protocol.pool_job(job_id, wait))

    async def cancel_pool_job(self, job_id: str) -> None:
        """``Client.cancel_pool_job``."""
        await self._drive(self._protocol.cancel_anywhere(job_id))

    async def attach(
        self,
        fpga_id: int,
        session_id: str | None = None,
        *,
        op_timeout: float | None = OP_TIMEOUT,
        renew_within: float = RENEW_WITHIN,
    ) -> AsyncBoardSession:
        flow = self._protocol.attach(fpga_id, session_id, renew_within, op_timeout)
        return AsyncBoardSession(self, await self._drive(flow))


class AsyncReservation(Awaitable["AsyncBoardSession"]):
    """What ``AsyncClient.reserve`` returns: await it for the session, or enter it with
    ``async with`` (the session is released on exit)."""

    def __init__(self, reserve: Callable[[], Awaitable[AsyncBoardSession]]) -> None:
        self._reserve = reserve  # called when awaited or entered, not before
        self._session: AsyncBoardSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncBoardSession]:
        return self._reserve().__await__()

    async def __aenter__(self) -> AsyncBoardSession:
        self._session = await self._reserve()
        return self._session

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.__aexit__(kind, exc, tb)


class AsyncBoardSession:
    """``BoardSession`` for asyncio: the same calls, awaited."""

    def __init__(self, client: AsyncClient, state: SessionState) -> None:
        self.client = client
        self._state = state
        self._protocol = client._protocol

    def __repr__(self) -> str:
        ended = " released" if self.released else ""
        return f"<AsyncBoardSession FPGA {self.fpga_id} session {self.session_id}{ended}>"

    @property
    def fpga_id(self) -> int:
        return self._state.fpga_id

    @property
    def session_id(self) -> str:
        return self._state.session_id

    @property
    def build(self) -> Job | None:
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
        return self._state.release_job

    async def __aenter__(self) -> AsyncBoardSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.release()
            return
        what = f"releasing FPGA {self.fpga_id}"
        flow = self._protocol.board_release(self._state, False, None)
        await self.client._cleanup(flow, exc, what)

    async def _address(self, address: int | str) -> int:
        if isinstance(address, int):
            return address
        return (await self.memory_map()).address(address)

    @overload
    async def read(
        self,
        address: int | str,
        length: int = 1,
        *,
        trace: Literal[False] = False,
        signals: Sequence[str] | None = None,
    ) -> list[int]: ...
    @overload
    async def read(
        self,
        address: int | str,
        length: int = 1,
        *,
        trace: Literal[True] | str | PathLike[str],
        signals: Sequence[str] | None = None,
    ) -> Traced: ...
    async def read(
        self,
        address: int | str,
        length: int = 1,
        *,
        trace: TraceArg = False,
        signals: Sequence[str] | None = None,
    ) -> list[int] | Traced:
        op = Read(await self._address(address), length)
        flow = self._protocol.board_run(self._state, op, True, bool(trace), signals)
        result = await self.client._drive(flow)
        return await asyncio.to_thread(traced, result, trace) if trace else result.data

    @overload
    async def write(
        self,
        address: int | str,
        data: int | Sequence[int],
        *,
        trace: Literal[False] = False,
        signals: Sequence[str] | None = None,
    ) -> None: ...
    @overload
    async def write(
        self,
        address: int | str,
        data: int | Sequence[int],
        *,
        trace: Literal[True] | str | PathLike[str],
        signals: Sequence[str] | None = None,
    ) -> Traced: ...
    async def write(
        self,
        address: int | str,
        data: int | Sequence[int],
        *,
        trace: TraceArg = False,
        signals: Sequence[str] | None = None,
    ) -> Traced | None:
        words = [data] if isinstance(data, int) else list(data)
        op = Write(await self._address(address), words)
        flow = self._protocol.board_run(self._state, op, True, bool(trace), signals)
        result = await self.client._drive(flow)
        return await asyncio.to_thread(traced, result, trace) if trace else None

    async def transact(
        self,
        ops: Sequence[Op],
        *,
        check: bool = True,
        trace: TraceArg = False,
        signals: Sequence[str] | None = None,
    ) -> RunResult:
        flow = self._protocol.board_run(self._state, list(ops), check, bool(trace), signals)
        result = await self.client._drive(flow)
        if trace and result.waveform is not None and not isinstance(trace, bool):
            await asyncio.to_thread(Path(trace).write_bytes, result.waveform)
        return result

    async def memory_map(self) -> MemoryMap:
        return await self.client._drive(self._protocol.board_memory_map(self._state))

    async def region(self, name: str) -> Region:
        return (await self.memory_map()).region(name)

    async def csr(self, name: str) -> int:
        return (await self.memory_map()).csr(name)

    async def logs(self, *, follow: bool = False) -> AsyncIterator[str]:
        if self.build is None:
            return
        async for line in self.client.logs(
            self.fpga_id, self.build.job_id, follow=follow, session_id=self.session_id
        ):
            yield line

    async def renew(self, seconds: int | None = None) -> Session:
        return await self.client._drive(self._protocol.renew_session(self._state, seconds))

    async def release(
        self, *, wait: bool = False, timeout: float | None = None
    ) -> JobAccepted | None:
        return await self.client._drive(self._protocol.board_release(self._state, wait, timeout))


#: The streamed answers a flow opened, each with its events as they come.
_Streams = dict[httpx.Response, AsyncGenerator[ServerSentEvent, None]]


async def _close(streams: _Streams) -> None:
    """Close every streamed answer of a flow that has ended (or was dropped)."""
    for response, events in streams.items():
        await events.aclose()
        await response.aclose()
