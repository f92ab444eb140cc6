"""``GET /events``: the lab's board and job events as Server-Sent Events, resumable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from fpgalab.service.deps import CallerDep, StoreDep
from fpgalab.service.errors import Forbidden, NotFound
from fpgalab.service.events import EventHub, Filter, stream
from fpgalab.service.handlers import responses
from fpgalab.service.states import MAX_BOARDS

router = APIRouter(tags=["events"])

_STREAM_ID = r"^[0-9]{1,19}(-[0-9]{1,19})?$"


async def get_hub(request: Request) -> EventHub:
    return request.app.state.events  # type: ignore[no-any-return]


JobFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Only this job's events (a job of the caller's, or any for an admin).",
    ),
]


async def get_filter(
    caller: CallerDep,
    store: StoreDep,
    fpga_id: Annotated[
        int | None, Query(ge=0, le=MAX_BOARDS - 1, description="Only this board's events.")
    ] = None,
    job_id: JobFilter = None,
) -> Filter:
    """The client's filter; a job of another caller's is refused here, before the stream
    begins (a generator's error would come after its 200)."""
    if job_id is not None:
        [owner] = await store.job_fields(job_id, "owner")
        if owner is None:
            raise NotFound("job_not_found", f"There is no job {job_id}.")
        if not caller.admin and owner != caller.name:
            raise Forbidden("not_session_owner", f"Job {job_id} belongs to another caller.")
    return Filter(caller.name, caller.admin, fpga_id, job_id)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses=responses("not_session_owner", "job_not_found"),
)
async def events(
    store: StoreDep,
    hub: Annotated[EventHub, Depends(get_hub)],
    filter: Annotated[Filter, Depends(get_filter)],
    after: Annotated[
        str | None,
        Query(pattern=_STREAM_ID, description="Replay the events after this id, then go live."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=_STREAM_ID,
            description="As ``after``, sent by a browser's EventSource when it reconnects: "
            "it wins over ``after`` (the URL's, which the reconnection sends again).",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every change of a board (state, health, session, current job) and of the
    caller's jobs (status; all jobs for an admin), as it happens: ``event:`` is
    ``board`` or ``job``, ``id:`` the event's id, ``data:`` its JSON. Sent with
    ``after`` (or ``Last-Event-ID``), the events after that id are replayed first;
    ``gap`` says some were already dropped, ``lagged`` that the client fell behind
    and is disconnected. See docs/api.md, Events."""
    async with hub.subscribe(filter) as sub:
        async for event in stream(store.redis, sub, last_event_id or after):
            yield event
