"""Route dependencies as named ``Annotated`` aliases.

They are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency
in its thread pool, a thread hop per dependency per request (benches/api.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import APIKeyHeader

from fpgalab.service import login
from fpgalab.service.auth import Caller, KeyRing
from fpgalab.service.errors import Forbidden, InvalidApiKey
from fpgalab.service.settings import Settings
from fpgalab.service.states import MAX_BOARDS
from fpgalab.service.store import Actor, Store
from fpgalab.service.waiters import MAX_WAIT, JobWaiters

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="Names the caller.")


async def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_waiters(request: Request) -> JobWaiters:
    return request.app.state.waiters  # type: ignore[no-any-return]


async def get_caller(request: Request, key: Annotated[str | None, Depends(_api_key)]) -> Caller:
    keyring: KeyRing = request.app.state.keyring
    caller = keyring.lookup(key)
    if caller is None and not key and request.method in ("GET", "HEAD"):
        # a browser's login cookie (service.login): for reads only
        secret = await login.lab_secret(request.app)
        caller = login.verify(keyring, request.cookies.get(login.COOKIE), secret)
    if caller is None:
        raise InvalidApiKey(
            "invalid_api_key", "A valid X-API-Key header is required." if not key
            else "The X-API-Key is not known to this lab."
        )  # fmt: skip
    return caller


async def get_actor(
    caller: Annotated[Caller, Depends(get_caller)],
    session_id: Annotated[
        str | None,
        Header(alias="X-Session-ID", description="The session acted on; checked when sent."),
    ] = None,
) -> Actor:
    return Actor(caller.name, caller.admin, session_id or "")


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.admin:
        raise Forbidden("admin_required", f"{caller.name} is not an admin of this lab.")
    return caller


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WaitersDep = Annotated[JobWaiters, Depends(get_waiters)]
CallerDep = Annotated[Caller, Depends(get_caller)]
ActorDep = Annotated[Actor, Depends(get_actor)]
AdminDep = Annotated[Caller, Depends(require_admin)]
FpgaId = Annotated[
    int,
    Path(
        ge=0,
        le=MAX_BOARDS - 1,
        description="Board id: one of the lab's boards (GET /fpga lists them; 0-9 by default).",
    ),
]
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="A retry with the same key (same caller) returns the first answer.",
    ),
]
WaitSeconds = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_WAIT,
        allow_inf_nan=False,
        description=f"Answer once the job has finished, or after this many seconds (more "
        f"than 0, at most {MAX_WAIT:g}) with the job as it is then.",
    ),
]
