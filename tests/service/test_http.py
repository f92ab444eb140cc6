"""The HTTP layer: no redirect to wherever ``Host`` points, ``HEAD`` on every ``GET``
route, and the bounds of the served socket (``service.server``) measured with real
sockets: the size of a request's head, the time it may take, and malformed requests
answered in the API's error shape."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fpgalab.service import server
from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from tests.helpers import assert_error, free_port

#: Header timeout of the served lab in these tests (seconds).
HEAD_TIMEOUT = 1.0
#: Head size limit of the served lab in these tests (bytes).
HEAD_LIMIT = 8 * 1024


class ServedLab:
    """The app under uvicorn exactly as ``fpgalab api`` serves it (``server.config``),
    on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
        config = server.config(create_app(self.settings), self.settings, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http-uvicorn", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return (self.settings.host, self.settings.port)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> ServedLab:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def served(settings: Settings) -> Iterator[ServedLab]:
    """The lab on a real socket, with a small head limit and a one-second head timeout."""
    lab = ServedLab(
        settings.model_copy(update={"max_header_bytes": HEAD_LIMIT, "header_timeout": HEAD_TIMEOUT})
    ).start()
    yield lab
    lab.stop()


def connect(lab: ServedLab) -> socket.socket:
    return socket.create_connection(lab.address, timeout=10)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length: (status, headers, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """The server has closed its end: a read gets EOF (or a reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def error_of(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The answer is JSON in the API's error shape; its ``detail``."""
    assert headers.get("content-type", "").startswith("application/json"), headers
    parsed = json.loads(body)
    assert set(parsed) == {"detail"} and set(parsed["detail"]) == {"error", "message"}, parsed
    return parsed["detail"]  # type: ignore[no-any-return]


# -- no redirects, HEAD ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/fpga/3/", "/fpga/", "/health/", "/fpga/3/session/"])
async def test_a_trailing_slash_is_a_404_not_a_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    """A path with a trailing slash is 404 not_found in the error shape, never a redirect to
    the Host header's site (which anyone may set)."""
    r = await client.get(path, headers={"Host": "evil.example"})
    assert_error(r, 404, "not_found")
    assert "location" not in r.headers


GET_ROUTES = [
    "/health", "/fpga", "/fpga/3", "/fpga/3/session", "/fpga/3/memory-map",
    "/fpga/3/jobs/nope", "/fpga/3/jobs/nope/logs", "/fpga/3/jobs/nope/result", "/fpga/12",
    "/openapi.json", "/docs", "/nowhere",
]  # fmt: skip


@pytest.mark.parametrize("path", GET_ROUTES)
async def test_head_answers_like_get_without_a_body(client: httpx.AsyncClient, path: str) -> None:
    """HEAD on any path gets the status and headers GET gets (Content-Length included),
    and no body."""
    got = await client.get(path)
    head = await client.head(path)
    assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
    assert head.content == b""
    assert head.headers.get("content-type") == got.headers.get("content-type")
    if path != "/health":  # its numbers (Redis's memory) move between two calls
        assert head.headers.get("content-length") == str(len(got.content))


@pytest.mark.parametrize("path", ["/fpga/3/submit", "/fpga/3/reset", "/fpga/3/session/renew"])
async def test_head_of_a_post_route_is_405(client: httpx.AsyncClient, path: str) -> None:
    """HEAD of a route that has no GET is what GET gets there: 405, without a body."""
    r = await client.head(path)
    assert r.status_code == 405 and r.content == b""
    assert "POST" in r.headers["allow"]


def test_head_and_no_redirect_on_the_served_socket(served: ServedLab) -> None:
    """Over a real socket too: HEAD /fpga/3 is GET's head without a body, and /fpga/3/ sent
    with a made-up Host is a 404 in the error shape, with no Location."""
    with httpx.Client(base_url=served.url, trust_env=False) as c:
        got = c.get("/fpga/3")
        head = c.head("/fpga/3")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(got.content))
        slash = c.get("/fpga/3/", headers={"Host": "evil.example"})
        assert_error(slash, 404, "not_found")
        assert "location" not in slash.headers


# -- the served socket's bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost localhost\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to the plain port
        b"GET /he alth HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ],
    ids=["header without colon", "bad content-length", "TLS hello", "space in the target"],
)
def test_a_malformed_request_gets_a_json_400(served: ServedLab, request_bytes: bytes) -> None:
    """A request that is not HTTP/1.1 is answered 400 bad_request in the error shape (not
    uvicorn's plain text), and the connection is closed."""
    with connect(served) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_answer(sock)
        assert status == 400, (status, body)
        assert error_of(status, headers, body)["error"] == "bad_request"
        assert closed_by_peer(sock)


def test_a_huge_header_is_refused_once_past_the_limit(served: ServedLab) -> None:
    """A header trickled towards 64 MiB is answered 431 request_header_too_large (error
    shape) and the connection closed, once the head passes the limit: the server never
    held more than the limit and one read of it."""
    chunk = b"a" * 1024
    sent = 0
    with connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        sock.setblocking(False)
        answer = b""
        while sent < 64 * 1024 * 1024:
            try:
                sock.send(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                pass
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if b"\r\n\r\n" in answer:
                break
            time.sleep(0.001)
        assert sent <= 4 * HEAD_LIMIT, f"still reading at {sent} bytes"
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), answer[:200]
        sock.setblocking(True)
        status, headers, body = read_answer_rest(sock, head, body)
        assert error_of(status, headers, body)["error"] == "request_header_too_large"
        assert closed_by_peer(sock)


def read_answer_rest(
    sock: socket.socket, head: bytes, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """The answer whose head (and part of its body) have been read already."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    sock.settimeout(10)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("size", [HEAD_LIMIT + 100, 4 * HEAD_LIMIT])
def test_a_whole_head_over_the_limit_is_refused(served: ServedLab, size: int) -> None:
    """A head over the limit sent at once (h11 may get it whole in one read) is 431 too."""
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    with connect(served) as sock:
        sock.sendall(head)
        status, headers, body = read_answer(sock)
        assert status == 431, body
        assert error_of(status, headers, body)["error"] == "request_header_too_large"


def test_a_head_under_the_limit_is_served(served: ServedLab) -> None:
    """A head just under the limit is served as usual."""
    value = b"a" * (HEAD_LIMIT - 200)
    with connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + value + b"\r\n\r\n")
        status, _, body = read_answer(sock)
        assert status == 200, body


def test_half_sent_heads_are_answered_408_and_closed_in_time(served: ServedLab) -> None:
    """300 connections that send half a head (or nothing) are each answered 408
    request_timeout and closed about HEADER_TIMEOUT after they opened, while a complete
    request on another connection is served at once."""
    socks = [connect(served) for _ in range(300)]
    try:
        started = time.monotonic()
        for i, sock in enumerate(socks):
            if i % 3:  # a third send nothing at all
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: local" if i % 3 == 1 else b"GE")
        with httpx.Client(base_url=served.url, trust_env=False) as c:
            t = time.monotonic()
            assert c.get("/health").status_code == 200
            assert time.monotonic() - t < HEAD_TIMEOUT / 2
        for sock in socks:
            status, headers, body = read_answer(sock, timeout=HEAD_TIMEOUT + 5)
            assert status == 408, body
            assert error_of(status, headers, body)["error"] == "request_timeout"
            assert closed_by_peer(sock)
        took = time.monotonic() - started
        assert HEAD_TIMEOUT * 0.8 < took < HEAD_TIMEOUT + 3, took
    finally:
        for sock in socks:
            sock.close()


def test_a_kept_alive_connection_has_the_same_head_deadline(served: ServedLab) -> None:
    """After an answer on a kept-alive connection, the next head has HEADER_TIMEOUT too:
    a client that sends half of it is answered 408 and closed."""
    with connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_answer(sock)[0] == 200
        sent = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        status, headers, body = read_answer(sock, timeout=HEAD_TIMEOUT + 5)
        assert status == 408 and error_of(status, headers, body)["error"] == "request_timeout"
        assert time.monotonic() - sent < HEAD_TIMEOUT + 2
        assert closed_by_peer(sock)


def test_a_slow_but_timely_head_and_a_slow_request_are_served(served: ServedLab) -> None:
    """A head sent in pieces within the deadline is served; the deadline is the head's
    alone, not the app's (a request that takes longer than it to answer is answered)."""
    with connect(served) as sock:
        for piece in (b"GET /fpga HTTP/1.1\r\n", b"Host: localhost\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(HEAD_TIMEOUT / 4)
        status, _, body = read_answer(sock)
        assert status == 200 and len(json.loads(body)) == 10


def test_a_request_pipelined_behind_a_large_body_is_served(served: ServedLab) -> None:
    """A head that begins in the same read as a large body before it (pipelining) is
    not taken for a large head: both requests are answered, in order."""
    body = b'{"reason": "' + b"r" * 400 + b'", "x": "' + b"a" * (300 * 1024) + b'"}'
    first = (
        b"POST /fpga/0/maintenance HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body
    )  # fmt: skip
    with connect(served) as sock:
        sock.sendall(first + b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        time.sleep(HEAD_TIMEOUT / 4)
        sock.sendall(b"\r\n")
        status, headers, answer = read_answer(sock)
        assert error_of(status, headers, answer)["error"] == "validation_error"  # field x
        status, _, answer = read_answer(sock)
        assert status == 200, answer


async def test_a_crash_in_the_app_is_answered_in_the_error_shape(settings: Settings) -> None:
    """An exception nothing translates (a bug: here a test route that raises) is a 500 in
    the error shape, saying nothing of the exception."""
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("secret detail of a bug")

    app.add_api_route("/test-only-broken", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://lab") as client:
        r = await client.get("/test-only-broken")
    assert r.status_code == 500
    message = "The lab failed to answer this request; it is logged."
    assert r.json() == {"detail": {"error": "internal_error", "message": message}}
    assert "secret" not in r.text
