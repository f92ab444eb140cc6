"""``GET /metrics``: the lab and this API process in Prometheus' text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST

from fpgalab.service.deps import SettingsDep, StoreDep, get_caller
from fpgalab.service.handlers import responses
from fpgalab.service.measures import read_lab
from fpgalab.service.metrics import ApiMetrics

router = APIRouter(tags=["health"])

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="Names the caller.")


async def scrape_allowed(
    request: Request,
    settings: SettingsDep,
    key: Annotated[str | None, Depends(_api_key)],
    authorization: Annotated[
        str | None,
        Header(description="`Bearer KEY`: the API key as Prometheus' `authorization` sends it."),
    ] = None,
) -> None:
    """Anyone when ``metrics_public``; else a caller with a key, in X-API-Key or as a
    bearer token (Prometheus sends that natively)."""
    if settings.metrics_public:
        return
    if not key and authorization and authorization[:7].lower() == "bearer ":
        key = authorization[7:].strip()
    await get_caller(request, key)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "The Prometheus text format (docs/operations.md, Metrics).",
        },
        **responses(text_route=True),
    },
    dependencies=[Depends(scrape_allowed)],
)
async def metrics(request: Request, store: StoreDep) -> Response:
    """The whole lab (boards, queues, jobs, workers, read from Redis now) and this API
    process (request latency by route, process). Needs an API key unless
    ``FPGALAB_METRICS_PUBLIC`` is set."""
    api: ApiMetrics = request.app.state.metrics
    lab = await read_lab(store)
    return Response(api.render(lab), media_type=CONTENT_TYPE_LATEST)
