"""The one parser of JSON request bodies: a body is JSON as RFC 8259 means it, taken once.

An object that names a key twice is refused (``json.loads`` would keep the last one, so
``{"op": 2, "op": 1}`` would be a write that reads as a read), and so are ``NaN`` and
``Infinity``, which Python's parser accepts but JSON has not. Either is ``422
validation_error`` naming the key or the constant. Every route of the API is a
``StrictJSONRoute``, so no route parses a body any other way; the models then take the
parsed values strictly (``service.models.StrictBody``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from fpgalab.service.errors import ValidationFailed
from fpgalab.service.handlers import CarriedLabError

#: Longest part of a key quoted back in a message.
_QUOTED = 64


def _refuse(message: str) -> CarriedLabError:
    # FastAPI turns any other error raised while it parses a body into a 400; an
    # HTTPException (which CarriedLabError is) reaches the error handler as it is
    return CarriedLabError(ValidationFailed("validation_error", f"body: {message}"))


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _refuse(f"the key {key[:_QUOTED]!a} appears twice in one object")
            seen.add(key)
    return found


def _constant(name: str) -> Any:
    raise _refuse(f"{name} is not a JSON value")


def loads(body: bytes) -> Any:
    """``body`` as JSON, refusing duplicate keys and NaN/Infinity (``CarriedLabError``)."""
    return json.loads(body, object_pairs_hook=_object, parse_constant=_constant)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An API route whose JSON body is parsed by ``loads``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
