"""``GET /audit``: the audit trail of mutating calls, newest first (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fpgalab.service.deps import AdminDep, StoreDep
from fpgalab.service.handlers import responses
from fpgalab.service.models import AuditEntry, audit_entry
from fpgalab.service.states import MAX_BOARDS

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[AuditEntry], responses=responses("admin_required"))
async def read_audit(
    store: StoreDep,
    _: AdminDep,
    fpga_id: Annotated[
        int | None, Query(ge=0, le=MAX_BOARDS - 1, description="Only calls on this board.")
    ] = None,
    caller: Annotated[
        str | None, Query(min_length=1, max_length=100, description="Only this caller's calls.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most entries to return.")] = 100,
    before: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9]{1,19}-[0-9]{1,19}$",
            description="Only entries older than this entry id (the next page).",
        ),
    ] = None,
) -> list[AuditEntry]:
    """Every mutating call (POST, DELETE), refused ones included: who, what, which board
    and job, the status answered, when. Kept up to ``FPGALAB_AUDIT_MAX_ENTRIES``."""
    found = await store.audit.read(limit, fpga_id=fpga_id, caller=caller, before=before)
    return [audit_entry(entry_id, fields) for entry_id, fields in found]
