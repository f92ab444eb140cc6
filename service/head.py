"""``HEAD`` on every route that answers ``GET``: the same status and headers, no body.

FastAPI routes answer only the methods they name, so a ``HEAD`` (which HTTP says every
``GET`` resource should answer, RFC 9110 9.3.2) was a ``405``. Rather than name ``HEAD``
on each route (and document every operation twice), this middleware asks the app the
``GET`` and keeps its answer's head; ``Content-Length`` stays that of the ``GET``. A
``HEAD`` of a route without a ``GET`` is the ``GET``'s ``405``. The ``GET`` it asks is
marked (``HEAD_SCOPE``), so that a route that would stream (a live log) answers the head
of its plain form instead of holding the ``HEAD`` open.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Set in the scope of the ``GET`` a ``HEAD`` is answered with.
HEAD_SCOPE = "fpgalab.head"


class HeadAsGet:
    """ASGI middleware: ``HEAD`` is answered as ``GET``, without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def head_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_SCOPE: True}, receive, head_only)
