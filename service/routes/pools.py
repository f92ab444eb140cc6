"""Pools: a design submitted for any free board of a platform with some tags
(``POST /submit``), and the lab's jobs by id alone (``GET`` and ``DELETE /jobs/{job_id}``),
a pool job's place in its queue and its ETA among them. Placement is in Redis
(``scripts/pool_submit.lua``, lib.lua's Pools): this module reads and checks requests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from fpgalab.backends import NAME_RULE, name_problem
from fpgalab.service.deps import (
    ActorDep,
    CallerDep,
    IdempotencyKey,
    JobId,
    SettingsDep,
    StoreDep,
    WaitersDep,
    WaitSeconds,
)
from fpgalab.service.errors import Forbidden, NotFound, ValidationFailed
from fpgalab.service.handlers import MUTATION_ERRORS, responses
from fpgalab.service.models import LabJobResponse, PoolJobAccepted, lab_job_response
from fpgalab.service.routes.boards import read_design
from fpgalab.service.states import PRIORITY_CALLER_MAX, PRIORITY_DEFAULT, PRIORITY_MAX
from fpgalab.service.store import Store
from fpgalab.service.waiters import FINISHED

router = APIRouter(tags=["pools"])

#: Most tags one pool job may ask for.
MAX_TAGS = 16


def requirement(platform: str | None, tags: str | None, denied: list[str]) -> str:
    """``platform|tag,tag|denied,denied`` of a pool submit's fields (each checked: ``422
    validation_error`` naming the field; sorted, each once) and the restricted tags its
    caller may not use: a tag of those asked for is ``403 tag_restricted``."""
    platform = (platform or "").strip()
    if platform and (problem := name_problem(platform)):
        raise ValidationFailed("validation_error", f"platform: {problem}.")
    wanted: set[str] = set()
    for tag in (t.strip() for t in (tags or "").split(",")):
        if not tag:
            continue
        if problem := name_problem(tag):
            raise ValidationFailed("validation_error", f"tags: {problem}.")
        wanted.add(tag)
    if len(wanted) > MAX_TAGS:
        raise ValidationFailed("validation_error", f"tags: at most {MAX_TAGS}, got {len(wanted)}.")
    if refused := sorted(wanted & set(denied)):
        raise Forbidden(
            "tag_restricted", f"tags: {', '.join(refused)} restricted to other callers."
        )
    return f"{platform}|{','.join(sorted(wanted))}|{','.join(denied)}"


@router.post(
    "/submit",
    status_code=202,
    response_model=PoolJobAccepted,
    responses=responses(
        "no_matching_board", "priority_reserved", "tag_restricted", "design_too_large",
        "unsupported_design",
        "empty_design", "design_not_text", "idempotency_key_reused", "too_many_queued_jobs",
        "too_many_boards", "storage_budget_exceeded", *MUTATION_ERRORS,
    ),
)  # fmt: skip
async def pool_submit(
    store: StoreDep,
    settings: SettingsDep,
    actor: ActorDep,
    file: Annotated[UploadFile, File(description="The design: a .py (Migen) or .v/.sv file.")],
    platform: Annotated[
        str | None,
        Form(
            max_length=32, description=f"Only boards of this platform ({NAME_RULE}); any if absent."
        ),
    ] = None,
    tags: Annotated[
        str | None,
        Form(max_length=600, description="Only boards with all of these tags, comma-separated."),
    ] = None,
    priority: Annotated[
        int,
        Form(
            ge=0,
            le=PRIORITY_MAX,
            description=f"0-{PRIORITY_MAX}, higher first; a caller's "
            f"at most {PRIORITY_CALLER_MAX}, the band above is the admins'.",
        ),
    ] = PRIORITY_DEFAULT,
    idempotency_key: IdempotencyKey = None,
) -> PoolJobAccepted:
    """Upload a design for the first suitable board to become free: healthy, not in
    maintenance, of ``platform`` and with every one of ``tags``. Placed at once if one is
    free (``fpga_id`` in the answer), else queued: by priority, then taking turns between
    callers, then in order of arrival. Once placed, its board's session and every route of
    the board work as after ``POST /fpga/{id}/submit``. See docs/api.md, Pools."""
    wanted = requirement(platform, tags, settings.denied_tags(actor.name, actor.admin))
    if priority > PRIORITY_CALLER_MAX and not actor.admin:
        raise Forbidden(
            "priority_reserved",
            f"priority {priority}: above {PRIORITY_CALLER_MAX} is the admins' band.",
        )
    filename, text, sha = await read_design(file, settings)
    reply = await store.pool_submit(actor, wanted, priority, filename, text, sha, idempotency_key)
    accepted = PoolJobAccepted.model_validate(reply)
    if accepted.fpga_id is None and not accepted.replayed:
        _, accepted.eta_seconds, _ = await store.pool_standing(accepted.job_id)
    return accepted


@router.get("/jobs/{job_id}", response_model=LabJobResponse, responses=responses("job_not_found"))
async def get_lab_job(
    job_id: JobId, store: StoreDep, waiters: WaitersDep, _: CallerDep, wait: WaitSeconds = None
) -> LabJobResponse:
    """Any job of the lab by its id alone: a pool job's ``fpga_id`` once placed (null
    before), its ``queue_position`` (0 once placed) and ``eta_seconds``. With ``wait``,
    answered once the job has finished — or, a pool job waiting for a board, once it is
    placed — or after ``wait`` seconds, as it is then."""
    if wait is None:
        return await _lab_job(store, job_id)
    first = await _lab_job(store, job_id)
    if first.status in FINISHED:
        return first
    waiting = first.queue_position is not None and first.fpga_id is None

    def done(job: LabJobResponse) -> bool:
        return job.status in FINISHED or (waiting and job.fpga_id is not None)

    return await waiters.until_finished(job_id, wait, lambda: _lab_job(store, job_id), done)


async def _lab_job(store: Store, job_id: str) -> LabJobResponse:
    record = await store.job(job_id)
    if not record:
        raise NotFound("job_not_found", f"There is no job {job_id}.")
    position = eta = None
    if "pool" in record:
        position, eta, _ = await store.pool_standing(job_id)
    return lab_job_response(record, position, eta)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    responses=responses(
        "job_not_found", "job_not_cancellable", "not_session_owner", "session_mismatch",
        *MUTATION_ERRORS,
    ),
)  # fmt: skip
async def cancel_lab_job(job_id: JobId, store: StoreDep, actor: ActorDep) -> Response:
    """Cancel a job no worker has taken yet, by its id alone: a pool job still waiting
    leaves its queue and never runs; one placed, or any other job, is cancelled on its
    board (a cancelled build frees the board)."""
    reply = await store.pool_cancel(job_id, actor)
    if "placed" in reply:
        await store.cancel(int(reply["placed"]), job_id, actor)
    return Response(status_code=204)
