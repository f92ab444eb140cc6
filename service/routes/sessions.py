"""A board's session: inspect, release, renew."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from fpgalab.service.deps import ActorDep, CallerDep, FpgaId, SettingsDep, StoreDep
from fpgalab.service.errors import NotFound
from fpgalab.service.handlers import MUTATION_ERRORS, responses
from fpgalab.service.jsonbody import StrictJSONRoute
from fpgalab.service.models import JobAccepted, RenewRequest, SessionResponse, session_info

router = APIRouter(prefix="/fpga/{fpga_id}/session", tags=["sessions"], route_class=StrictJSONRoute)


async def _session(store: StoreDep, fpga_id: int) -> SessionResponse:
    board, _ = await store.board(fpga_id)
    info = session_info(board)
    if info is None:
        raise NotFound("no_active_session", f"FPGA {fpga_id} has no active session.")
    return SessionResponse(fpga_id=fpga_id, **info.model_dump())


@router.get("", response_model=SessionResponse, responses=responses("no_active_session"))
async def get_session(fpga_id: FpgaId, store: StoreDep, _: CallerDep) -> SessionResponse:
    return await _session(store, fpga_id)


@router.post(
    "/release",
    status_code=202,
    response_model=JobAccepted,
    responses=responses(
        "no_active_session",
        "fpga_not_resettable",
        "not_session_owner",
        "session_mismatch",
        *MUTATION_ERRORS,
    ),
)
async def release(fpga_id: FpgaId, store: StoreDep, actor: ActorDep) -> JobAccepted:
    """End the session: queues a reset; the board is idle once it completes."""
    return JobAccepted.model_validate(await store.reset(fpga_id, actor, "release"))


@router.post(
    "/renew",
    response_model=SessionResponse,
    responses=responses(
        "no_active_session",
        "session_renew_limit",
        "not_session_owner",
        "session_mismatch",
        *MUTATION_ERRORS,
    ),
)
async def renew(
    fpga_id: FpgaId,
    store: StoreDep,
    settings: SettingsDep,
    actor: ActorDep,
    body: Annotated[RenewRequest | None, Body()] = None,
) -> SessionResponse:
    """Extend the session (by the TTL, or ``seconds``), never past its maximum lifetime."""
    seconds = (body.seconds if body else None) or settings.session_ttl
    await store.renew(fpga_id, actor, seconds)
    return await _session(store, fpga_id)
