"""``POST /login`` and ``POST /logout``: the dashboard's cookie (``service.login``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from fpgalab.service import login
from fpgalab.service.deps import CallerDep, SettingsDep
from fpgalab.service.errors import InvalidApiKey
from fpgalab.service.handlers import MUTATION_ERRORS, responses

router = APIRouter(tags=["login"])
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="Names the caller.")


class LoginResponse(BaseModel):
    caller: str
    admin: bool
    expires_at: datetime = Field(description="When the login cookie stops being accepted.")


@router.post("/login", response_model=LoginResponse, responses=responses(*MUTATION_ERRORS))
async def log_in(
    request: Request, response: Response, caller: CallerDep, settings: SettingsDep
) -> LoginResponse:
    """Trade the ``X-API-Key`` header for a login cookie (HttpOnly, SameSite=Strict,
    ``FPGALAB_LOGIN_TTL`` seconds) that a browser sends with its reads — ``GET /events``
    from an ``EventSource`` among them. The cookie holds a signed token, never the key;
    calls that change something still need ``X-API-Key``."""
    token, expires = login.issue(
        request.app.state.keyring, caller, await login.lab_secret(request.app), settings.login_ttl
    )
    response.set_cookie(
        login.COOKIE,
        token,
        max_age=settings.login_ttl,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return LoginResponse(
        caller=caller.name, admin=caller.admin, expires_at=datetime.fromtimestamp(expires, UTC)
    )


@router.post("/logout", status_code=204, responses=responses(*MUTATION_ERRORS))
async def log_out(request: Request, key: Annotated[str | None, Depends(_api_key)]) -> Response:
    """Forget the login cookie. Its caller is named by the cookie itself, or by
    ``X-API-Key``: a call that changes nothing but the caller's own browser."""
    keyring = request.app.state.keyring
    token = request.cookies.get(login.COOKIE)
    secret = await login.lab_secret(request.app)
    if keyring.lookup(key) is None and login.verify(keyring, token, secret) is None:
        raise InvalidApiKey("invalid_api_key", "A valid X-API-Key or login cookie is required.")
    response = Response(status_code=204)
    response.delete_cookie(
        login.COOKIE, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response
