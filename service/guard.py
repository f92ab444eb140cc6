"""The guard of mutating calls (POST, DELETE): the caller's rate limit before the call,
its audit record after it.

For each mutating call the guard names the caller (from ``X-API-Key``; an unknown
key is audited under no name and answered 401 by the route), its address
(``service.auth.client_address``) and the route, then:

- a caller who is not an admin takes a token from its bucket (``service.ratelimit``),
  or, for a run on a board its session holds, from its bucket for that board;
  an empty bucket answers ``429 rate_limited`` with ``Retry-After``, and the refusal is
  audited by the same script call. Admins are exempt: they are the lab's operators,
  and in an open lab every caller is ``anonymous`` and an admin, one name for all;
- a call with an unknown (or no) key takes a token from its address's bucket; past it,
  ``429 rate_limited`` too, and the refusal is counted rather than recorded one by one;
- otherwise the call runs; its answer is held until its audit record is written (one
  ``XADD``), so a record exists by the time the caller has the answer. The record
  takes the job id from the path or from the 202 body, the error code from an error
  body. Should the write fail, the answer still goes out and a warning is logged. An
  answer that says Redis failed the call (``503 redis_unavailable``) is not held: its
  record is tried after it, so that a stalled Redis costs the caller one deadline, not
  two.

Reads (GET, HEAD) pass straight through: they are neither limited nor audited.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fpgalab.service.audit import AuditRecord
from fpgalab.service.auth import Caller, KeyRing, client_address, limit_address
from fpgalab.service.bodylimit import MUTATING
from fpgalab.service.errors import TooManyRequests
from fpgalab.service.handlers import error_response, redis_failure
from fpgalab.service.settings import proxy_networks
from fpgalab.service.store import Store

log = logging.getLogger("fpgalab.api")

#: Most of an answer held back to read its job id or error code (bytes); a longer
#: answer is passed on as it comes, audited without them.
_HOLD = 64 * 1024


def _route(routes: Sequence[BaseRoute], scope: Scope) -> tuple[str, dict[str, Any]]:
    """The name and path parameters of the mutating route ``scope`` calls, known before
    the app routes it (a refused call never reaches the router): ('', {}) if none."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "name", ""), child.get("path_params", {})
    return "", {}


def _outcome(status: int, body: bytes) -> tuple[str, str]:
    """(job id, error code) an answer names, '' for what it does not."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    if status >= 400:
        detail = data.get("detail")
        error = detail.get("error") if isinstance(detail, dict) else None
        return "", error if isinstance(error, str) else ""
    job_id = data.get("job_id")
    return (job_id if isinstance(job_id, str) else ""), ""


class _Held:
    """The answer of one call, held back (up to ``_HOLD``) until it is audited."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.messages: list[Message] = []
        self.size = 0
        self.status = 0
        self.complete = False
        self.released = False

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def hold(self, message: Message) -> bool:
        """Keep ``message``; True once the answer is whole or too long to hold."""
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        self.messages.append(message)
        return self.complete or self.size > _HOLD

    async def release(self) -> None:
        self.released = True
        for message in self.messages:
            await self._send(message)
        self.messages = []


class MutationGuard:
    """ASGI middleware: rate limit and audit of every mutating call; ``routes`` are the
    app's mutating routes (to name the action and its board), ``trusted_proxies`` the
    ``FPGALAB_TRUSTED_PROXIES`` setting (whose X-Forwarded-For names the client)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], trusted_proxies: str) -> None:
        self.app = app
        self.routes = list(routes)
        self.proxies = proxy_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        store: Store = state.store
        keyring: KeyRing = state.keyring
        caller = keyring.lookup(Headers(scope=scope).get("x-api-key"))
        action, params = _route(self.routes, scope)
        fpga_id = str(params.get("fpga_id", ""))
        address = client_address(scope, self.proxies)

        def record(status: int, job_id: str = "", error: str = "") -> AuditRecord:
            return AuditRecord(
                caller=caller.name if caller else "",
                method=scope["method"],
                path=scope["path"][:200],
                action=action,
                fpga_id=fpga_id if fpga_id.isdigit() else "",
                job_id=str(params.get("job_id", ""))[:64] or job_id,
                status=status,
                error=error,
                client=address,
            )

        limiter = store.rate_limiter
        if (caller is None and limiter.unknown_enabled) or (
            caller is not None and not caller.admin and limiter.limits(action)
        ):
            refused = record(429, error="rate_limited")
            # a run may be on the caller's own board: the script picks that board's bucket
            run_on = int(fpga_id) if action == "run" and fpga_id.isdigit() else None
            own = False
            try:
                if caller is None:
                    wait = await limiter.take_unknown(limit_address(address), refused)
                else:
                    wait, own = await limiter.take(caller.name, refused, run_on)
            except (RedisError, OSError) as exc:
                await redis_failure(exc)(scope, receive, send)
                return
            if wait:
                await self._refuse(caller, address, wait, own)(scope, receive, send)
                return

        held = _Held(send)

        async def audited(message: Message) -> None:
            if held.released:
                await send(message)
            elif held.hold(message):
                job_id, error = _outcome(held.status, held.body if held.complete else b"")
                if error == "redis_unavailable":
                    # Redis failed this very call (down, or stalled past its deadline):
                    # the answer goes out now, its record is tried after it
                    await held.release()
                await self._write(store, record(held.status, job_id, error))
                if not held.released:
                    await held.release()

        try:
            await self.app(scope, receive, audited)
        except Exception:
            if not held.released:  # the server answers 500 for it
                await self._write(store, record(held.status or 500, error="internal_error"))
            raise
        if not held.released and held.messages:
            await self._write(store, record(held.status))
            await held.release()

    @staticmethod
    def _refuse(caller: Caller | None, address: str, wait: int, own: bool) -> JSONResponse:
        who = (
            f"{caller.name} is" if caller
            else f"{address} is sending calls with unknown API keys, and is"
        )  # fmt: skip
        limit = "for runs on a board of its own" if own else "for changes"
        error = TooManyRequests(
            "rate_limited",
            f"{who} over this lab's rate limit {limit}; retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
        return error_response(error)

    @staticmethod
    async def _write(store: Store, record: AuditRecord) -> None:
        try:
            await store.audit.record(record)
        except (RedisError, OSError) as exc:
            log.warning(
                "audit record of %s %s (%d) not written: %s",
                record.method, record.path, record.status, type(exc).__name__,
            )  # fmt: skip
