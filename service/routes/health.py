"""``GET /health``: the service is up, and whether Redis answers."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.deps import StoreDep
from service.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Redis is unreachable."}},
)
async def health(store: StoreDep) -> HealthResponse | JSONResponse:
    try:
        up = await asyncio.wait_for(store.ping(), timeout=2.0)
    except (RedisError, OSError, TimeoutError):
        up = False
    if up:
        return HealthResponse(status="ok", redis=True)
    body = HealthResponse(status="degraded", redis=False)
    return JSONResponse(body.model_dump(), status_code=503)
