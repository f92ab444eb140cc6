"""Boards: list, inspect, submit a design, run a transaction, reset, maintenance."""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Response, UploadFile

from fpgalab.backends import FILENAME_RULE, filename_problem
from fpgalab.service.deps import (
    ActorDep,
    AdminDep,
    CallerDep,
    FpgaId,
    IdempotencyKey,
    SettingsDep,
    StoreDep,
    WaitersDep,
    WaitSeconds,
)
from fpgalab.service.errors import (
    DesignRejected,
    DesignTooLarge,
    Forbidden,
    NotFound,
    ValidationFailed,
)
from fpgalab.service.handlers import MUTATION_ERRORS, responses
from fpgalab.service.jsonbody import StrictJSONRoute
from fpgalab.service.models import (
    FPGASummary,
    JobAccepted,
    MaintenanceRequest,
    RunAccepted,
    RunBody,
    RunOpsRequest,
    RunRequest,
    board_summary,
    result_json,
)
from fpgalab.service.settings import Settings
from fpgalab.service.waiters import FINISHED

router = APIRouter(prefix="/fpga", tags=["fpga"], route_class=StrictJSONRoute)


@router.get("", response_model=list[FPGASummary], responses=responses())
async def list_fpgas(store: StoreDep, _: CallerDep) -> list[FPGASummary]:
    return [board_summary(i, b, w) for i, b, w in await store.boards()]


@router.get("/{fpga_id}", response_model=FPGASummary, responses=responses())
async def get_fpga(fpga_id: FpgaId, store: StoreDep, _: CallerDep) -> FPGASummary:
    board, worker = await store.board(fpga_id)
    return board_summary(fpga_id, board, worker)


@router.get(
    "/{fpga_id}/memory-map",
    response_model=dict[str, Any],
    responses=responses("memory_map_unknown", "not_session_owner"),
)
async def memory_map(fpga_id: FpgaId, store: StoreDep, caller: CallerDep) -> Response:
    """The LiteX ``csr.json`` of the SoC on the board now: the base SoC, public (the
    lab's published SoC, the same on every board), or the session's build (a user's
    design: only its owner or an admin may read it)."""
    state, owner, found = await store.memory_map(fpga_id)
    if owner is not None and owner != caller.name and not caller.admin:
        raise Forbidden("not_session_owner", f"FPGA {fpga_id} holds another caller's design.")
    if found is None or state not in ("idle", "reserved"):
        raise NotFound(
            "memory_map_unknown",
            f"FPGA {fpga_id} is {state}; its memory map is known once a worker has checked "
            "it (idle) or programmed it (reserved).",
        )
    return Response(found, media_type="application/json")


@router.post(
    "/{fpga_id}/submit",
    status_code=202,
    response_model=JobAccepted,
    responses=responses(
        "fpga_not_idle", "fpga_unavailable", "tag_restricted", "design_too_large",
        "unsupported_design",
        "empty_design", "design_not_text", "idempotency_key_reused", "rate_limited",
        "too_many_queued_jobs", "too_many_boards", "storage_budget_exceeded", "redis_full",
    ),
)  # fmt: skip
async def submit(
    fpga_id: FpgaId,
    store: StoreDep,
    settings: SettingsDep,
    actor: ActorDep,
    file: Annotated[UploadFile, File(description="The design: a .py (Migen) or .v/.sv file.")],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Upload a design and queue its build_and_program job; opens a session."""
    filename, text, sha = await read_design(file, settings)
    reply = await store.submit(fpga_id, actor, filename, text, sha, idempotency_key)
    return JobAccepted.model_validate(reply)


async def read_design(file: UploadFile, settings: Settings) -> tuple[str, str, str]:
    """An uploaded design: its file name, its text and the sha256 of its bytes; refused
    (each with its code) if the name, the size or the bytes are not a design's."""
    filename = posixpath.basename((file.filename or "").replace("\\", "/"))
    # the name is shown in job records, logs and pages: a refused one is never echoed
    if problem := filename_problem(filename):
        raise DesignRejected(
            "unsupported_design", f"a design's file name is {FILENAME_RULE}; {problem}."
        )
    raw = await file.read(settings.max_upload_bytes + 1)
    if len(raw) > settings.max_upload_bytes:
        raise DesignTooLarge(
            "design_too_large",
            f"file {filename!r} is over the {settings.max_upload_bytes}-byte upload limit.",
        )
    if not raw.strip():
        raise DesignRejected("empty_design", f"file {filename!r} is empty.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DesignRejected(
            "design_not_text", f"file {filename!r} is not UTF-8 text (byte {exc.start})."
        ) from None
    if "\x00" in text:
        raise DesignRejected("design_not_text", f"file {filename!r} contains NUL bytes.")
    return filename, text, hashlib.sha256(raw).hexdigest()


@router.post(
    "/{fpga_id}/run",
    status_code=202,
    response_model=RunAccepted,
    responses=responses(
        "fpga_not_reserved", "not_session_owner", "session_mismatch", "idempotency_key_reused",
        "too_many_queued_jobs", "storage_budget_exceeded", *MUTATION_ERRORS,
    ),
)  # fmt: skip
async def run(
    fpga_id: FpgaId,
    request: Annotated[RunBody, Body()],
    store: StoreDep,
    settings: SettingsDep,
    actor: ActorDep,
    waiters: WaitersDep,
    idempotency_key: IdempotencyKey = None,
    wait: WaitSeconds = None,
) -> Response:
    """Queue one Wishbone transaction, or several in order (``ops``) as one job; runs queue
    behind each other in order. With ``wait``, answered once the run has finished (or
    after ``wait`` seconds): ``status`` as it is then, and ``result`` once finished."""
    if problem := _over_limits(request, settings):
        raise ValidationFailed("validation_error", problem)
    # an untraced run is stored as before traces existed: no "trace": false in it
    body = request.model_dump_json(exclude_none=True, exclude_defaults=True)
    accepted = JobAccepted.model_validate(await store.run(fpga_id, actor, body, idempotency_key))
    answer = accepted.model_dump_json()
    if wait is not None:
        job_id = accepted.job_id

        async def read() -> list[str | None]:
            return await store.job_fields(job_id, "status", "result", "error")

        status, stored, error = await waiters.until_finished(
            job_id, wait, read, lambda fields: fields[0] in FINISHED
        )
        result = result_json(status, stored, error)
        # the result as stored (no parse and re-encode of 65k words), after the fields
        answer = (
            answer[:-1]
            + f',"status":{json.dumps(status)}'
            + (f',"result":{result}}}' if result is not None else "}")
        )
    return Response(answer, status_code=202, media_type="application/json")


def _over_limits(request: RunRequest | RunOpsRequest, settings: Settings) -> str | None:
    """What of this lab's own limits (under the schema's) ``request`` is over, if any."""
    limit = f"this lab's limit of {settings.max_transfer_words} words per job"
    if isinstance(request, RunRequest):
        if request.words > settings.max_transfer_words:
            return f"{'data' if request.data else 'length'}: {request.words} words is over {limit}"
        return None
    if len(request.ops) > settings.max_ops_per_run:
        return (
            f"ops: {len(request.ops)} transactions is over this lab's limit of "
            f"{settings.max_ops_per_run} transactions per job"
        )
    if request.words > settings.max_transfer_words:
        return f"ops: {request.words} words in all is over {limit}"
    return None


@router.post(
    "/{fpga_id}/reset",
    status_code=202,
    response_model=JobAccepted,
    responses=responses(
        "fpga_not_resettable", "not_session_owner", "session_mismatch", *MUTATION_ERRORS
    ),
)
async def reset(fpga_id: FpgaId, store: StoreDep, actor: ActorDep) -> JobAccepted:
    """Reflash the base SoC and free the board; closes the session."""
    return JobAccepted.model_validate(await store.reset(fpga_id, actor, "reset"))


@router.post(
    "/{fpga_id}/maintenance",
    response_model=FPGASummary,
    responses=responses("admin_required", *MUTATION_ERRORS),
)
async def maintenance(
    fpga_id: FpgaId,
    store: StoreDep,
    admin: AdminDep,
    body: Annotated[MaintenanceRequest | None, Body()] = None,
) -> FPGASummary:
    """Take a board out of service (admin). A running session carries on."""
    why = (body.reason if body else None) or f"put in maintenance by {admin.name}"
    await store.set_health(fpga_id, "maintenance", "maintenance", why)
    return await get_fpga(fpga_id, store, admin)


@router.post(
    "/{fpga_id}/online",
    response_model=FPGASummary,
    responses=responses("admin_required", *MUTATION_ERRORS),
)
async def online(fpga_id: FpgaId, store: StoreDep, admin: AdminDep) -> FPGASummary:
    """Bring a board out of maintenance (admin): its health becomes good."""
    await store.set_health(fpga_id, "online", "good", f"brought online by {admin.name}")
    return await get_fpga(fpga_id, store, admin)
