"""Request body limits, enforced before and while a body is read, never after.

A mutating call whose ``Content-Length`` is over its limit is answered ``413`` at once,
its body unread. A body without one (chunked) is counted as it streams in, and the read
stops with the same ``413`` as soon as it passes the limit: no more than the limit (plus
one chunk) is ever held. The limit is ``FPGALAB_MAX_BODY_BYTES`` for JSON routes, and
``FPGALAB_MAX_UPLOAD_BYTES`` plus ``MULTIPART_SLACK`` (the form's framing) for a
design upload, refused as ``design_too_large``, as the route's own size check does.
Reads (GET) never read a body.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fpgalab.service.errors import DesignTooLarge, LabError, RequestTooLarge
from fpgalab.service.handlers import CarriedLabError, error_response
from fpgalab.service.settings import Settings

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Room for a multipart form's boundaries and part headers around an upload (bytes).
MULTIPART_SLACK = 64 * 1024

_UPLOAD = re.compile(r"^/fpga/[^/]+/submit/?$")


def body_limit(settings: Settings, path: str) -> tuple[int, LabError]:
    """The largest body a call to ``path`` may send, and the error past it."""
    if _UPLOAD.match(path):
        limit = settings.max_upload_bytes
        return limit + MULTIPART_SLACK, DesignTooLarge(
            "design_too_large", f"the upload is over the {limit}-byte upload limit."
        )
    limit = settings.max_body_bytes
    return limit, RequestTooLarge(
        "request_too_large", f"the request body is over this lab's {limit}-byte limit."
    )


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server refuses a malformed length before we see it


class BodyLimit:
    """ASGI middleware: the request body limits of mutating calls."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        limit, error = body_limit(scope["app"].state.settings, scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit:
            await error_response(error)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise CarriedLabError(error)
            return message

        await self.app(scope, limited, send)
