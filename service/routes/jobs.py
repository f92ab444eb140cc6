"""Jobs of a board: status (at once, or once finished), logs (whole, or streamed as
they grow), result, cancel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse
from starlette.routing import Match
from starlette.types import Scope

from fpgalab.service import logfollow
from fpgalab.service.deps import (
    ActorDep,
    CallerDep,
    FpgaId,
    JobId,
    StoreDep,
    WaitersDep,
    WaitSeconds,
)
from fpgalab.service.errors import Conflict, Forbidden, NotFound
from fpgalab.service.handlers import MUTATION_ERRORS, responses
from fpgalab.service.head import HEAD_SCOPE
from fpgalab.service.logfollow import LogNotices
from fpgalab.service.models import JobResponse, RunResult, job_response, result_json
from fpgalab.service.store import Actor, Store
from fpgalab.service.waiters import FINISHED, JobWaiters

router = APIRouter(prefix="/fpga/{fpga_id}/jobs", tags=["jobs"])


def _check_board(fpga_id: int, job_id: str, job_board: str | None) -> None:
    """A job of another board is as unknown here as a job that does not exist."""
    if job_board != str(fpga_id):
        raise NotFound("job_not_found", f"FPGA {fpga_id} has no job {job_id}.")


async def _fields(store: Store, fpga_id: int, job_id: str, *fields: str) -> list[str | None]:
    values = await store.job_fields(job_id, "fpga_id", *fields)
    _check_board(fpga_id, job_id, values[0])
    return values[1:]


def _check_reader(actor: Actor, owner: str | None, session_id: str | None, job_id: str) -> None:
    """The job's owner (or an admin) reads it; a sent X-Session-ID must be the job's
    session, as ``cancel.lua`` checks for a cancel."""
    if not actor.admin and owner != actor.name:
        raise Forbidden("not_session_owner", f"Job {job_id} belongs to another caller.")
    if actor.session_header and session_id and actor.session_header != session_id:
        raise Forbidden(
            "session_mismatch", f"X-Session-ID does not match the session of job {job_id}."
        )


@router.get("/{job_id}", response_model=JobResponse, responses=responses("job_not_found"))
async def get_job(
    fpga_id: FpgaId,
    job_id: JobId,
    store: StoreDep,
    waiters: WaitersDep,
    _: CallerDep,
    wait: WaitSeconds = None,
) -> JobResponse:
    """The job's record; with ``wait``, answered once the job has finished, or after
    ``wait`` seconds with the job as it is then."""
    if wait is None:
        return await _job(store, fpga_id, job_id)
    return await waiters.until_finished(job_id, wait, lambda: _job(store, fpga_id, job_id), _done)


def _done(answer: JobResponse | _Stored) -> bool:
    return answer.status in FINISHED


async def _job(store: Store, fpga_id: int, job_id: str) -> JobResponse:
    record = await store.job(job_id)
    _check_board(fpga_id, job_id, record.get("fpga_id"))
    return job_response(record)


class _Streamed(APIRoute):
    """A route taken only by a request that asks for a stream (``Accept:
    text/event-stream``, or ``?follow=true``); any other goes on to the next route of
    the same path: the plain-text log stays what it was."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE or _wants_stream(scope):
            return match, child
        return Match.NONE, {}


def _wants_stream(scope: Scope) -> bool:
    if scope.get(HEAD_SCOPE):  # a HEAD gets the plain log's head, never an open stream
        return False
    accept = b",".join(v for k, v in scope.get("headers", ()) if k == b"accept")
    if b"text/event-stream" in accept.lower():
        return True
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
    return any(k == "follow" and v.lower() in ("1", "true", "yes", "on") for k, v in query)


async def _readable_log(fpga_id: FpgaId, job_id: JobId, store: StoreDep, actor: ActorDep) -> str:
    """The job's id, once the caller may read its log: checked before a stream starts."""
    owner, session_id = await _fields(store, fpga_id, job_id, "owner", "session_id")
    _check_reader(actor, owner, session_id, job_id)
    return job_id


async def _notices(request: Request) -> LogNotices:
    return request.app.state.log_notices  # type: ignore[no-any-return]


async def stream_logs(
    job_id: Annotated[str, Depends(_readable_log)],
    store: StoreDep,
    waiters: WaitersDep,
    notices: Annotated[LogNotices, Depends(_notices)],
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description="Resume after this line.")
    ] = None,
    after: Annotated[int, Query(ge=0, description="Start after this line number.")] = 0,
    follow: Annotated[bool, Query(description="Stream, as Accept: text/event-stream.")] = False,
) -> EventSourceResponse:
    """The log as Server-Sent Events: see ``get_logs``."""
    # an EventSource resends its first URL (with its ?after=) and the id it last saw
    start = after if last_event_id is None else last_event_id
    events = logfollow.follow(store, waiters, notices, job_id, start)
    # as fastapi.sse's generator routes answer, but a chunk of events per write
    return EventSourceResponse(
        events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# before the plain route: it is tried first, and steps aside for a plain request
router.add_api_route(
    "/{job_id}/logs",
    stream_logs,
    methods=["GET"],
    route_class_override=_Streamed,
    include_in_schema=False,  # documented as a form of the plain route's answer
)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {}, "text/event-stream": {}},
            "description": "The job's log so far; or, asked for with `Accept: "
            "text/event-stream` (or `?follow=true`), its lines as they come as "
            "Server-Sent Events (`id:` the line's number; `Last-Event-ID` or `?after=N` "
            "resumes after line N), then one `end` event with the job's status.",
        },
        **responses("job_not_found", "not_session_owner", "session_mismatch", text_route=True),
    },
)
async def get_logs(fpga_id: FpgaId, job_id: JobId, store: StoreDep, actor: ActorDep) -> str:
    owner, session_id = await _fields(store, fpga_id, job_id, "owner", "session_id")
    _check_reader(actor, owner, session_id, job_id)
    lines = await store.logs(job_id)
    return "".join(line + "\n" for line in lines)


@router.get(
    "/{job_id}/result",
    response_model=RunResult,
    responses=responses(
        "job_not_found", "job_not_complete", "not_session_owner", "session_mismatch"
    ),
)
async def get_result(
    fpga_id: FpgaId,
    job_id: JobId,
    store: StoreDep,
    actor: ActorDep,
    waiters: WaitersDep,
    wait: WaitSeconds = None,
) -> Response:
    """Words a run job read (``data``), once it has finished; with ``wait``, answered once
    the job has finished, or after ``wait`` seconds (``409 job_not_complete`` then)."""
    stored = await _stored(store, waiters, actor, fpga_id, job_id, wait)
    result = result_json(stored.status, stored.result, stored.error)
    if result is None:
        raise Conflict(
            "job_not_complete", f"Job {job_id} is {stored.status}; it has no result yet."
        )
    # stored as the JSON it is served as: no parse and re-encode of 65k words
    return Response(result, media_type="application/json")


#: How a waveform is served: its format's name, in the headers as in the result.
WAVEFORM_TYPES = {"vcd": "text/x-vcd"}


@router.get(
    "/{job_id}/waveform",
    response_class=Response,
    responses={
        200: {
            "content": {"text/x-vcd": {"schema": {"type": "string"}}},
            "description": "The run's waveform (VCD); `X-Waveform-Format` names the format.",
        },
        **responses(
            "job_not_found", "job_not_complete", "waveform_not_found", "not_session_owner",
            "session_mismatch",
        ),
    },
)  # fmt: skip
async def get_waveform(
    fpga_id: FpgaId,
    job_id: JobId,
    store: StoreDep,
    actor: ActorDep,
    waiters: WaitersDep,
    wait: WaitSeconds = None,
) -> Response:
    """A traced run's waveform, once it has finished: a VCD of the run's window as the
    board's logic analyzer captured it (GTKWave and Surfer open it). Its owner and admins
    read it, as they read the result; with ``wait``, answered once the job has finished."""
    stored = await _stored(store, waiters, actor, fpga_id, job_id, wait)
    if result_json(stored.status, stored.result, stored.error) is None:
        raise Conflict(
            "job_not_complete", f"Job {job_id} is {stored.status}; it has no waveform yet."
        )
    trace = _trace_of(stored.result)
    if trace is None:
        raise NotFound(
            "waveform_not_found", f"Job {job_id} has no waveform: it did not ask for a trace."
        )
    if not trace.get("ok"):
        raise NotFound(
            "waveform_not_found",
            f"Job {job_id} has no waveform: {trace.get('error') or 'its trace failed'}",
        )
    data = await store.waveform(job_id)
    if data is None:
        raise NotFound("waveform_not_found", f"Job {job_id}'s waveform has expired.")
    kind = str(trace.get("format") or "vcd")
    return Response(
        data,
        media_type=WAVEFORM_TYPES.get(kind, "application/octet-stream"),
        headers={
            "X-Waveform-Format": kind,
            "Content-Disposition": f'attachment; filename="fpga{fpga_id}-{job_id}.{kind}"',
        },
    )


def _trace_of(result: str | None) -> dict[str, Any] | None:
    """The ``trace`` part of a stored run result (None: the run was not traced)."""
    if not result:
        return None
    try:
        trace = json.loads(result).get("trace")
    except (ValueError, AttributeError):
        return None
    return trace if isinstance(trace, dict) else None


@dataclass(frozen=True)
class _Stored:
    """The fields of a job its result is made of."""

    owner: str | None
    session_id: str | None
    status: str | None
    result: str | None
    error: str | None


async def _stored(
    store: Store, waiters: JobWaiters, actor: Actor, fpga_id: int, job_id: str, wait: float | None
) -> _Stored:
    """A job's result fields for a caller who may read them (checked before any wait);
    with ``wait``, once the job has finished or the wait is over."""

    async def read() -> _Stored:
        fields = await _fields(
            store, fpga_id, job_id, "owner", "session_id", "status", "result", "error"
        )
        _check_reader(actor, fields[0], fields[1], job_id)
        return _Stored(*fields)

    if wait is None:
        return await read()
    return await waiters.until_finished(job_id, wait, read, _done)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=responses(
        "job_not_found", "job_not_cancellable", "not_session_owner", "session_mismatch",
        *MUTATION_ERRORS,
    ),
)  # fmt: skip
async def cancel_job(fpga_id: FpgaId, job_id: JobId, store: StoreDep, actor: ActorDep) -> Response:
    """Cancel a job no worker has taken yet; a cancelled build frees the board."""
    await store.cancel(fpga_id, job_id, actor)
    return Response(status_code=204)
