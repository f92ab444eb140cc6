"""Jobs of a board: status, logs, result, cancel."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from fpgalab.service.deps import ActorDep, CallerDep, FpgaId, JobId, StoreDep
from fpgalab.service.errors import Conflict, Forbidden, NotFound
from fpgalab.service.handlers import MUTATION_ERRORS, responses
from fpgalab.service.models import JobResponse, RunResult, job_response
from fpgalab.service.states import JobStatus
from fpgalab.service.store import Actor, Store

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
async def get_job(fpga_id: FpgaId, job_id: JobId, store: StoreDep, _: CallerDep) -> JobResponse:
    record = await store.job(job_id)
    _check_board(fpga_id, job_id, record.get("fpga_id"))
    return job_response(record)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The job's log so far."},
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
async def get_result(fpga_id: FpgaId, job_id: JobId, store: StoreDep, actor: ActorDep) -> Response:
    """Words a run job read (``data``), once it has finished."""
    owner, session_id, status, result, error = await _fields(
        store, fpga_id, job_id, "owner", "session_id", "status", "result", "error"
    )
    _check_reader(actor, owner, session_id, job_id)
    if status not in (JobStatus.COMPLETE, JobStatus.FAILED):
        raise Conflict("job_not_complete", f"Job {job_id} is {status}; it has no result yet.")
    if result is None:  # builds, resets, and runs that never reached the bus
        result = json.dumps({"ok": status == JobStatus.COMPLETE, "data": [], "error": error})
    # stored as the JSON it is served as: no parse and re-encode of 65k words
    return Response(result, media_type="application/json")


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
