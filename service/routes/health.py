"""``GET /health``: the service is up, whether Redis answers, Redis's memory, and how many
boards are ready."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import NoPermissionError, RedisError

from fpgalab.service.deps import SettingsDep, StoreDep
from fpgalab.service.models import BoardCounts, HealthResponse, RedisMemory
from fpgalab.service.store import board_ready

router = APIRouter(tags=["health"])


def memory_warning(memory: RedisMemory, threshold: float) -> str | None:
    """What is wrong with Redis's memory for the lab, if anything: no limit, a policy that
    evicts lab state, or use past ``threshold`` of the limit."""
    found = []
    if memory.policy != "noeviction":
        found.append(
            f"Redis's maxmemory-policy is {memory.policy}: at its limit it evicts keys, lab "
            "state among them; the lab needs noeviction"
        )
    if memory.max_bytes is None:
        found.append("Redis has no maxmemory: it can grow until the host runs out of memory")
    elif memory.used_bytes >= threshold * memory.max_bytes:
        found.append(
            f"Redis uses {memory.used_bytes / memory.max_bytes:.0%} of its maxmemory "
            f"({memory.used_bytes} of {memory.max_bytes} bytes); when it is full, new work "
            "is refused (503 redis_full)"
        )
    return "; ".join(found) + "." if found else None


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Redis is unreachable."}},
)
async def health(store: StoreDep, settings: SettingsDep) -> HealthResponse | JSONResponse:
    """The API answers; whether Redis does, its memory, and how many boards are ready.
    Boards that are not ready (yet) do not make the lab degraded: a submit to a board
    not checked yet is accepted and runs once the board is up."""
    deadline = settings.redis_timeout
    try:
        await asyncio.wait_for(store.ping(), timeout=deadline)
        rows = await asyncio.wait_for(store.boards(), timeout=deadline)
        ready = [i for i, record, worker in rows if board_ready(record, worker)]
        boards = BoardCounts(ready=len(ready), total=len(rows))
        used, limit, policy = await asyncio.wait_for(store.memory(), timeout=deadline)
    except NoPermissionError:  # a shared Redis whose lab user may not run INFO
        return HealthResponse(
            status="ok", redis=True, boards=boards,
            warning="Redis's memory is unknown: the lab's Redis user may not run INFO.",
        )  # fmt: skip
    except (RedisError, OSError, TimeoutError):
        body = HealthResponse(status="degraded", redis=False)
        return JSONResponse(body.model_dump(), status_code=503)
    memory = RedisMemory(used_bytes=used, max_bytes=limit or None, policy=policy)
    return HealthResponse(
        status="ok",
        redis=True,
        memory=memory,
        warning=memory_warning(memory, settings.redis_memory_warning),
        boards=boards,
    )
