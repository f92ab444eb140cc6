"""One place that turns every failure into ``{"detail": {"error", "message"}}``.

Domain errors carry their own code and status; request validation, unknown
routes, Redis outages and a full Redis are translated here, at the boundary.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from fpgalab.service.errors import ALL_ERRORS, LabError
from fpgalab.service.models import UNION_TAGS, ErrorResponse
from fpgalab.service.store import NotReplicated

log = logging.getLogger("fpgalab.api")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"detail": {"error": code, "message": message}}


def _describe(loc: tuple[Any, ...], msg: str) -> str:
    where = ".".join(str(p) for p in loc if p not in ("body",)) or "body"
    if where in ("path.fpga_id", "fpga_id"):
        return f"fpga_id: {msg} (boards are 0-9)"
    msg = msg.removeprefix("Value error, ")
    if re.match(r"[a-z_]+: ", msg):  # a check across fields that already names its field
        return msg if where == "body" else f"{where}.{msg}"  # ops.2.data: ...
    return f"{where}: {msg}"


def _without_tags(error: Any) -> Any:
    """A validation error whose location leaves out a union's tags (``RunRequest``): they
    name which body was meant, not a field of it."""
    return {**error, "loc": tuple(p for p in error.get("loc", ()) if p not in UNION_TAGS)}


def error_response(exc: LabError) -> JSONResponse:
    """The response of a LabError: its shape, status and headers."""
    return JSONResponse(
        error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers or None
    )


async def lab_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LabError)
    return error_response(exc)


def _json_invalid(error: Any) -> str:
    """A body that is not JSON at all names the body, not a bare character position."""
    why = error.get("ctx", {}).get("error", "decode error")
    return f"body: not valid JSON ({why} at position {error['loc'][-1]})"


#: What a body field of the wrong JSON type should have been, by pydantic error type.
_EXPECTED = {
    "int_type": "expected a JSON integer",
    "string_type": "expected a JSON string",
    "bool_type": "expected true or false",
    "list_type": "expected a JSON array",
    "dict_type": "expected a JSON object",
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
}


def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, for a message; strings are never quoted back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**20 else "a longer integer"
    if isinstance(value, float):
        return f"{value!r}, a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _wrong_type(error: Any) -> str | None:
    """A body field of the wrong JSON type (bodies are taken strictly): the field, what it
    should be and what it was, e.g. ``address: expected a JSON integer, got a string``."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type")
    if not loc or loc[0] != "body" or (kind not in _EXPECTED and kind != "enum"):
        return None
    where = ".".join(str(p) for p in loc[1:]) or "body"
    msg = str(error.get("msg", ""))
    expected = _EXPECTED.get(kind) or msg.replace("Input should be ", "expected ", 1)
    return f"{where}: {expected}, got {_json_kind(error.get('input'))}"


#: The most problems one 422 names; it says how many more there are.
_ERRORS_SHOWN = 10


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [
        _json_invalid(e) if e.get("type") == "json_invalid"
        else _wrong_type(e) or _describe(tuple(e.get("loc", ())), str(e.get("msg", "")))
        for e in map(_without_tags, exc.errors()[:_ERRORS_SHOWN])
    ]  # fmt: skip
    if (more := len(exc.errors()) - _ERRORS_SHOWN) > 0:
        parts.append(f"and {more} more")  # 4,096 bad ops (or 65,536 bad words) are one line
    return JSONResponse(error_body("validation_error", "; ".join(parts)), status_code=422)


class CarriedLabError(StarletteHTTPException):
    """A LabError raised where only an HTTPException gets through: from inside the
    request body stream, which FastAPI reads (any other error there becomes a 400)."""

    def __init__(self, error: LabError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, CarriedLabError):
        return error_response(exc.error)
    if exc.status_code == 400:
        # only FastAPI/Starlette raise 400, for a body they cannot parse at all (not UTF-8,
        # broken multipart): the same 422 as a body that parses but does not validate
        cause = exc.__cause__
        why = (
            f"not valid UTF-8 (byte {cause.start})"
            if isinstance(cause, UnicodeDecodeError)
            else str(exc.detail)
        )
        return JSONResponse(error_body("validation_error", f"body: {why}"), status_code=422)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def redis_failure(exc: BaseException) -> JSONResponse:
    """The answer to a Redis error, wherever a call met it: ``503 redis_full`` when Redis
    refused a write at its ``maxmemory`` (``noeviction``: it never drops lab state to make
    room), else ``503 redis_unavailable`` (Redis unreachable, or past its deadline,
    ``FPGALAB_REDIS_TIMEOUT``). A refused script changed nothing: Redis refuses a function
    that may write before it starts, a plain script at its first write; a command past its
    deadline was sent, and a stalled Redis may still carry it out once it resumes."""
    if isinstance(exc, OutOfMemoryError):
        log.warning("redis is full (maxmemory): a change was refused")
        return JSONResponse(
            error_body(
                "redis_full",
                "The lab's state store (Redis) is full (at its maxmemory): new work is "
                "refused until finished jobs expire or an operator makes room; nothing was "
                "changed.",
            ),
            status_code=503,
            headers={"Retry-After": "60"},
        )
    log.warning("redis unavailable: %s", type(exc).__name__)
    message = "The lab's state store (Redis) is unreachable; retry."
    if isinstance(exc, NotReplicated):
        # the primary has the job, and runs it; only a failover before a replica has
        # it would lose it (FPGALAB_REDIS_WAIT_REPLICAS)
        message = (
            f"The lab queued job {exc.job_id}, but no replica of its state store (Redis) "
            "confirmed it in time, so it could be lost if Redis fails over now; retry. A "
            "retry with the same Idempotency-Key answers with the same job; without one, "
            "look before you repeat the call."
        )
    elif isinstance(exc, RedisTimeoutError):
        # the command was sent: Redis, stalled, may still carry it out once it resumes
        message = (
            "The lab's state store (Redis) did not answer in time; retry. A call that "
            "changes something may still be carried out when Redis resumes: retry it with "
            "the same Idempotency-Key, or look before you repeat it."
        )
    return JSONResponse(
        error_body("redis_unavailable", message),
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def redis_error_handler(_: Request, exc: Exception) -> JSONResponse:
    return redis_failure(exc)


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A failure nothing else translated is the lab's own bug: logged with its traceback,
    answered in the error shape like every other failure (never the framework's plain
    text), and without a word of the exception, which may hold anything."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "The lab failed to answer this request; it is logged."),
        status_code=500,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(LabError, lab_error_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RedisError, redis_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)


_ERROR_REF = "#/components/schemas/ErrorResponse"

#: What every mutating route (POST, DELETE) may also answer: a body over the limit,
#: a caller over its rate (``service.guard``, ``service.bodylimit``), Redis full.
MUTATION_ERRORS = ("request_too_large", "rate_limited", "redis_full")

_RETRY_AFTER = {
    "Retry-After": {
        "description": "With rate_limited or storage_budget_exceeded: whole seconds until "
        "the caller may try again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def responses(*codes: str, text_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may fail with ``codes``, plus the errors
    every route can return (401, 422, 503), grouped by status with the codes listed.

    ``text_route``: the route answers text/plain; FastAPI would document a ``model``
    under that media type, but errors are JSON, so their content is given explicitly
    (ErrorResponse is in the schema through every other route)."""
    by_status: dict[int, list[str]] = {
        401: ["invalid_api_key"],
        422: ["validation_error"],
        503: ["redis_unavailable"],
    }
    for code in codes:
        status = next(cls.status for cls in ALL_ERRORS if code in cls.codes)
        by_status.setdefault(status, []).append(code)
    error: dict[str, Any] = (
        {"content": {"application/json": {"schema": {"$ref": _ERROR_REF}}}}
        if text_route
        else {"model": ErrorResponse}
    )
    documented: dict[int | str, dict[str, Any]] = {}
    for status, found in sorted(by_status.items()):
        documented[status] = {**error, "description": "Error codes: " + ", ".join(sorted(found))}
        if status == 429:
            documented[status]["headers"] = _RETRY_AFTER
    return documented


def document_unknown_boards(routes: Iterable[BaseRoute]) -> None:
    """Every route of one board (``{fpga_id}`` in its path) may answer ``404
    fpga_not_found``, for a board the lab does not have: added to what each documents."""
    for route in routes:
        if not isinstance(route, APIRoute) or "{fpga_id}" not in route.path:
            continue
        found = route.responses.get(404)
        codes = set()
        if found is not None:
            codes = set(found["description"].removeprefix("Error codes: ").split(", "))
        codes.add("fpga_not_found")
        # its schema given as content: a model added after the route was made is not seen
        error = responses("fpga_not_found", text_route=True)[404]
        route.responses[404] = {**(found or error), "description": "Error codes: "
                                + ", ".join(sorted(codes))}  # fmt: skip
