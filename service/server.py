"""How the API is served: uvicorn, with the bounds a socket open to tenants needs.

uvicorn's defaults bound neither a request's head nor the time a client takes to send
it (a 64 MiB header was buffered; 300 connections sent half a head and were held), and
answer a request they cannot parse in plain text. Here, on uvicorn's httptools
protocol (the fast one; h11 would bound the head by itself but halves the requests a
process serves):

- the request line and headers together are at most ``FPGALAB_MAX_HEADER_BYTES``: an
  unfinished head is refused as soon as it passes the limit (no more than the limit and
  two network reads of it are ever held), a finished one over it too: ``431
  request_header_too_large``;
- a head must be complete within ``FPGALAB_HEADER_TIMEOUT`` seconds of the connection's
  start, or of the previous answer on a kept-alive connection: ``408 request_timeout``
  and the connection is closed (a body's pace, and idle kept-alive connections, are
  uvicorn's: ``timeout_keep_alive``);
- a head that does not parse is ``400 bad_request``;

each in the API's error shape, the connection then closed. ``X-Forwarded-For`` is not
uvicorn's to read (``proxy_headers=False``): the lab trusts it only from the proxies it
is told of.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from fpgalab.service.errors import BadRequest, LabError, RequestHeadTooLarge, RequestTimeout
from fpgalab.service.handlers import error_body
from fpgalab.service.settings import Settings

#: What the request line adds to its headers' bytes (spaces, ``HTTP/1.1``, CRLFs).
_LINE = len(b"  HTTP/1.1\r\n\r\n")


def _too_large(limit: int) -> RequestHeadTooLarge:
    return RequestHeadTooLarge(
        "request_header_too_large",
        f"the request line and headers are over this lab's {limit}-byte limit.",
    )


def _payload(error: LabError) -> bytes:
    return json.dumps(error_body(error.code, error.message)).encode()


class BoundedHead:
    """ASGI wrapper: a request whose head, parsed, is over ``limit`` bytes is ``431``.
    (The protocol refuses an unfinished head past the limit; one that arrived whole in
    one network read is only measured here.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope["query_string"]
            size = _LINE + len(scope["method"]) + len(scope["raw_path"])
            size += len(query) + 1 if query else 0  # and its '?'
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                body = _payload(_too_large(self.limit))
                await send({
                    "type": "http.response.start", "status": 431,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")],
                })  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class LabProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a size and a deadline for each request head
    and its refusals in the API's error shape."""

    #: ``FPGALAB_MAX_HEADER_BYTES`` and ``FPGALAB_HEADER_TIMEOUT``; set by ``protocol``.
    max_head: ClassVar[int] = 16 * 1024
    header_timeout: ClassVar[float] = 10.0

    _head_timer: asyncio.TimerHandle | None = None
    #: Between a request's first byte and the end of its headers.
    _in_head = False
    #: Requests begun on this connection (to tell whether a read began a new one).
    _begun = 0
    #: Bytes known to be the current head's (a read in which it began is not counted).
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        before = (self._in_head, self._begun)
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # a read that began and ended inside one head was all head; a read in which the
        # head began may hold the end of the request before it (pipelining): not counted,
        # so the bound is the limit and two reads
        self._head_bytes = self._head_bytes + len(data) if before == (True, self._begun) else 0
        if self._head_bytes > self.max_head:
            self._refuse(_too_large(self.max_head))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._begun, self._head_bytes = True, self._begun + 1, 0
        if self._head_timer is None:  # a head that follows another request's at once
            self._await_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._answered():
            self._await_head()  # for the next request on this kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(BadRequest("bad_request", "the request is not valid HTTP/1.1."))

    def _answered(self) -> bool:
        """Every request read so far has its whole answer: one may be written now."""
        return self.cycle is None or (self.cycle.response_complete and not self.pipeline)

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._in_head and self.cycle is not None:
            return  # no byte of a next request: an idle kept-alive connection is uvicorn's
        if not self._answered():  # a head behind a request still being answered
            self._await_head()
            return
        late = f"the request line and headers took over {self.header_timeout:g} s."
        self._refuse(RequestTimeout("request_timeout", late))

    def _refuse(self, error: LabError) -> None:
        """Answer ``error`` and close the connection, instead of a request (only closed,
        if an earlier request's answer is still being written)."""
        if self._answered():
            body = _payload(error)
            self.transport.write(
                STATUS_LINE[error.status]
                + b"content-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
        self.transport.close()


def protocol(settings: Settings) -> type[LabProtocol]:
    """``LabProtocol`` with this lab's head limit and timeout."""

    class Configured(LabProtocol):
        max_head = settings.max_header_bytes
        header_timeout = settings.header_timeout

    return Configured


def config(app: FastAPI, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` with ``settings``' bounds; ``options``
    are passed on (``log_level``, ...)."""
    return uvicorn.Config(
        BoundedHead(app, settings.max_header_bytes),
        host=settings.host,
        port=settings.port,
        http=protocol(settings),
        ws="none",
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        # open streams would otherwise hold a stopping API for ever
        timeout_graceful_shutdown=options.pop("timeout_graceful_shutdown", settings.shutdown_grace),
        **options,
    )
