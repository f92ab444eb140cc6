"""Live logs through real HTTP: ``GET /fpga/{id}/jobs/{job}/logs`` as Server-Sent Events
on a lab under uvicorn, its worker writing the lines as a build prints them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fpgalab.backends.base import Build, Design, LogFn
from fpgalab.client import Client
from fpgalab.service import keys, server
from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from fpgalab.service.worker import LOG_FLUSH
from tests.client.conftest import ALICE, BOB, OPS, LiveLab, StartLab, client
from tests.fakes import HOLD_TIMEOUT, FakeBackend
from tests.helpers import free_port

#: A design the ``Talking`` backend builds by printing what the test hands it.
TALKING = b"# TALK\nDesign = None\n"
STREAM = {"Accept": "text/event-stream"}


class Talking(FakeBackend):
    """A FakeBackend whose build of a ``TALK`` design prints each line the test puts in
    ``lines``, as it comes, and ends when it gets ``None``."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.said: dict[str, float] = {}  # line -> when the build printed it

    def build(self, design: Design, log: LogFn) -> Build:
        if b"TALK" not in design.source:
            return super().build(design, log)
        while (line := self.lines.get(timeout=HOLD_TIMEOUT)) is not None:
            self.said[line] = time.monotonic()
            log(line)
        return Build(key=design.sha256, details={"program_fail": False})


@pytest.fixture
def talking() -> Iterator[Talking]:
    fake = Talking()
    yield fake
    fake.lines.put(None)  # a build still talking ends
    fake.close()


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The events of a ``text/event-stream`` answer, parsed as the HTML spec says (lines
    end at CR, LF or CRLF; comments skipped), each a dict of its fields."""
    assert response.headers["content-type"].startswith("text/event-stream")
    buffer, event = "", dict[str, Any]()
    for chunk in response.iter_text():
        buffer += chunk
        *lines, buffer = re.split(r"\r\n|\r|\n", buffer)
        for line in lines:
            if not line:
                if event:
                    yield event
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                event[name] = event[name] + "\n" + value if name in event else value


def stream(http: httpx.Client, path: str, **options: Any) -> contextlib.AbstractContextManager:
    headers = {**STREAM, **options.pop("headers", {})}
    return http.stream("GET", path, headers=headers, timeout=20, **options)


def lines_of(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(int(e["id"]), json.loads(e["data"])) for e in events if "event" not in e]


def read_until_end(
    events: Iterator[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every event left up to the ``end`` event, which must be the stream's last."""
    events = list(events)
    assert events[-1]["event"] == "end", events[-1]
    assert [e for e in events if "event" in e] == events[-1:]  # one end, nothing after it
    return events[:-1], json.loads(events[-1]["data"])


def submit(lab: LiveLab, fpga_id: int, design: bytes = TALKING, key: str | None = None) -> str:
    with client(lab, api_key=key) as c:
        return c.submit(fpga_id, design, filename="talk.py").job_id


def next_line(events: Iterator[dict[str, Any]]) -> tuple[int, str]:
    event = next(events)
    assert "event" not in event, event
    return int(event["id"]), json.loads(event["data"])


def test_a_follower_sees_lines_as_they_come_and_the_end(
    start_lab: StartLab, talking: Talking
) -> None:
    """Each line reaches a follower within about one log flush of its print, while the
    build runs; the stream ends with one ``end`` event saying the job completed."""
    lab = start_lab(backend=talking, boards=[2])
    job = submit(lab, 2)
    delays = []
    with (
        httpx.Client(base_url=lab.url, trust_env=False) as http,
        stream(http, f"/fpga/2/jobs/{job}/logs") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-cache"
        events = sse(answer)
        for i in range(10):
            talking.lines.put(f"line {i}")
            line = ""
            while line != f"line {i}":  # the lab's own lines before it
                _, line = next_line(events)
            delays.append(time.monotonic() - talking.said[line])
        talking.lines.put(None)
        rest, end = read_until_end(events)
    assert end == {"status": "complete", "error": None}
    assert any("programmed" in line for _, line in lines_of(rest))
    # a flush every LOG_FLUSH, then one notice: well under a polling client's period
    assert max(delays) < LOG_FLUSH + 0.4, delays


def test_a_reconnect_gets_every_line_once_in_order(start_lab: StartLab, talking: Talking) -> None:
    """A follower cut off mid-build reconnects with Last-Event-ID and, between the two
    streams, has every line of the log exactly once and in order, and the end."""
    lab = start_lab(backend=talking, boards=[3])
    job = submit(lab, 3)
    seen: list[tuple[int, str]] = []
    with httpx.Client(base_url=lab.url, trust_env=False) as http:
        for i in range(30):
            talking.lines.put(f"first {i}")
        with stream(http, f"/fpga/3/jobs/{job}/logs") as answer:
            events = sse(answer)
            while not seen or seen[-1][1] != "first 19":
                seen.append(next_line(events))
        # cut off: lines keep coming, the job ends while nobody follows
        for i in range(30):
            talking.lines.put(f"second {i}")
        talking.lines.put(None)
        with stream(
            http, f"/fpga/3/jobs/{job}/logs", headers={"Last-Event-ID": str(seen[-1][0])}
        ) as answer:
            rest, end = read_until_end(sse(answer))
        plain = http.get(f"/fpga/3/jobs/{job}/logs").text.splitlines()
        # ?after= is the same resume point, for a client that cannot send the header
        with stream(http, f"/fpga/3/jobs/{job}/logs", params={"after": seen[5][0]}) as answer:
            again, _ = read_until_end(sse(answer))
    got = seen + lines_of(rest)
    assert [n for n, _ in got] == list(range(1, len(plain) + 1))
    assert [line for _, line in got] == plain
    assert [f"first {i}" for i in range(30)] + [f"second {i}" for i in range(30)] == [
        line for line in plain if line.startswith(("first", "second"))
    ]
    assert lines_of(again) == got[6:]
    assert end["status"] == "complete"


class Api:
    """One more API process on the lab's Redis (no worker): a replica, or the API after
    a restart, on a loop and thread of its own; ``stop`` drops its connections."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        port = port or free_port()
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
        self.app = create_app(self.settings)
        self.server = uvicorn.Server(server.config(self.app, self.settings, log_level="warning"))
        self.thread = threading.Thread(target=asyncio.run, args=(self.server.serve(),))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def __enter__(self) -> Api:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "API not up"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = self.server.force_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive()


def test_an_api_restart_mid_stream_is_survived(start_lab: StartLab, talking: Talking) -> None:
    """A stream served by an API process that stops mid-build resumes, with
    Last-Event-ID, on another process of the same lab: every line once, and the end."""
    lab = start_lab(backend=talking, boards=[4])
    job = submit(lab, 4)
    seen: list[tuple[int, str]] = []
    for i in range(20):
        talking.lines.put(f"before {i}")
    with (
        Api(lab.settings) as api,
        httpx.Client(base_url=api.url, trust_env=False) as http,
        stream(http, f"/fpga/4/jobs/{job}/logs") as answer,
    ):
        events = sse(answer)
        while not seen or seen[-1][1] != "before 9":
            seen.append(next_line(events))
        api.stop()  # under the open stream
        with contextlib.suppress(httpx.HTTPError):
            for event in events:  # what was on its way, then the cut
                assert "event" not in event, event
                seen.append((int(event["id"]), json.loads(event["data"])))
    for i in range(20):
        talking.lines.put(f"after {i}")
    talking.lines.put(None)
    with httpx.Client(base_url=lab.url, trust_env=False) as http:
        last = {"Last-Event-ID": str(seen[-1][0])}
        with stream(http, f"/fpga/4/jobs/{job}/logs", headers=last) as answer:
            rest, end = read_until_end(sse(answer))
        plain = http.get(f"/fpga/4/jobs/{job}/logs").text.splitlines()
    got = seen + lines_of(rest)
    assert [n for n, _ in got] == list(range(1, len(plain) + 1))
    assert [line for _, line in got] == plain
    assert end["status"] == "complete"


def test_the_client_follows_the_stream_through_an_api_restart(
    start_lab: StartLab, talking: Talking
) -> None:
    """``Client.logs(follow=True)`` reads the lab's stream of the log (the API follows the
    log for it: no polling), and when the API process under it stops and another comes
    back on its address, resumes where it was cut: every line once, in order, to the
    end of the job."""
    lab = start_lab(backend=talking, boards=[7])
    job = submit(lab, 7)
    got: list[str] = []
    failed: list[BaseException] = []
    first = Api(lab.settings)

    def follow() -> None:
        try:
            with Client(first.url, timeout=5) as c:
                got.extend(c.logs(7, job, follow=True))
        except Exception as exc:  # the test's thread says it
            failed.append(exc)

    reader = threading.Thread(target=follow)
    with first:
        reader.start()
        for i in range(10):
            talking.lines.put(f"before {i}")
        settled(lambda: "before 9" in got, True)
        assert first.app.state.log_notices.following == 1
    for i in range(10):  # while no API serves the lab
        talking.lines.put(f"during {i}")
    time.sleep(0.5)
    with Api(lab.settings, port=first.settings.port):
        for i in range(10):
            talking.lines.put(f"after {i}")
        talking.lines.put(None)
        reader.join(30)
    assert not reader.is_alive() and not failed, failed
    with httpx.Client(base_url=lab.url, trust_env=False) as http:
        plain = http.get(f"/fpga/7/jobs/{job}/logs").text.splitlines()
    assert got == plain
    assert [line for line in got if line.endswith(" 9")] == ["before 9", "during 9", "after 9"]


def test_the_cli_follows_a_build_on_the_stream(
    start_lab: StartLab, talking: Talking, tmp_path: Path
) -> None:
    """``fpgalab submit --follow`` reads the log from the lab's stream (the API follows
    the log for it while it waits: a look at the job is one small request however long
    the log grows) and prints every line once, in order."""
    from tests.client.test_cli import FPGALAB, env_for

    lab = start_lab(backend=talking, boards=[8])
    design = tmp_path / "talk.py"
    design.write_bytes(TALKING)
    with Api(lab.settings) as api:
        command = subprocess.Popen(
            [str(FPGALAB), "submit", str(design), "--board", "8", "--follow"],
            env=env_for(api.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for i in range(500):
                talking.lines.put(f"line {i}")
            settled(lambda: api.app.state.log_notices.following, 1, timeout=20)
            talking.lines.put(None)
            out, err = command.communicate(timeout=30)
        finally:
            command.kill()
    assert command.returncode == 0, err
    printed = [line for line in out.splitlines() if line.startswith("line ")]
    assert printed == [f"line {i}" for i in range(500)]


class CutStream(httpx.SyncByteStream):
    """A test double's body: these bytes, then the connection drops (``ReadError``)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.ReadError("connection reset by peer")


def test_the_clients_stream_resumes_after_the_last_line_it_gave() -> None:
    """A test double of a lab (``httpx.MockTransport``): the stream is cut after two
    lines, then after a half-sent event; the client reopens it with ``Last-Event-ID`` of
    the last whole line and gives each line once. A lab that answers the stream's request
    with the plain log is read again and again instead (an older lab)."""
    asked: list[str | None] = []
    log = ["one", "two", "three", "four"]

    def event(n: int) -> bytes:
        return f"id: {n}\ndata: {json.dumps(log[n - 1])}\n\n".encode()

    def streaming(request: httpx.Request) -> httpx.Response:
        resumed = request.headers.get("last-event-id")
        asked.append(resumed)
        headers = {"content-type": "text/event-stream"}
        if resumed is None:
            return httpx.Response(200, headers=headers, stream=CutStream(event(1) + event(2)))
        if asked == [None, "2"]:  # a line half sent, then cut: it is not given
            return httpx.Response(200, headers=headers, stream=CutStream(event(3)[:-1]))
        end = b'event: end\ndata: {"status": "complete", "error": null}\n\n'
        return httpx.Response(200, headers=headers, content=event(3) + event(4) + end)

    with Client("http://lab", transport=httpx.MockTransport(streaming)) as lab:
        assert list(lab.logs(1, "j", follow=True)) == log
    assert asked == [None, "2", "2"]

    def plain(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, text="".join(line + "\n" for line in log))
        at = "2026-01-01T00:00:00Z"
        job = {"job_id": "j", "fpga_id": 1, "type": "reset", "status": "complete",
               "created_at": at, "updated_at": at}  # fmt: skip
        return httpx.Response(200, json=job)

    asked.clear()
    with Client("http://lab", transport=httpx.MockTransport(plain)) as lab:
        assert list(lab.logs(1, "j", follow=True)) == log
        assert list(lab.logs(1, "j", follow=True)) == log
    # the stream asked for once: then the job and its log, read as before
    assert asked == ["/fpga/1/jobs/j/logs", *["/fpga/1/jobs/j", "/fpga/1/jobs/j/logs"] * 2]


def test_a_stream_is_refused_before_it_starts(start_lab: StartLab) -> None:
    """Who may read a streamed log is who may read the plain one, checked before the
    stream starts: another caller's job is 403, a wrong X-Session-ID 403, no key 401,
    another board's job 404 — JSON errors, not streams."""
    lab = start_lab(api_keys="alice=alice-key,bob=bob-key,ops=ops-key:admin", boards=[5])
    job = submit(lab, 5, b"# a design\nDesign = None\n", key=ALICE)
    path = f"/fpga/5/jobs/{job}/logs"
    with httpx.Client(base_url=lab.url, trust_env=False, timeout=20) as http:
        for headers, status, code in [
            ({"X-API-Key": BOB}, 403, "not_session_owner"),
            ({"X-API-Key": ALICE, "X-Session-ID": "another"}, 403, "session_mismatch"),
            ({}, 401, "invalid_api_key"),
        ]:
            for ask in (
                {"headers": {**STREAM, **headers}},
                {"headers": headers, "params": {"follow": "true"}},
            ):
                answer = http.get(path, **ask)
                assert answer.status_code == status, answer.text
                assert answer.json()["detail"]["error"] == code
        assert (
            http.get(f"/fpga/6/jobs/{job}/logs", headers={**STREAM, "X-API-Key": ALICE}).status_code
            == 404
        )
        for key in (ALICE, OPS):  # the owner, an admin
            with stream(http, path, headers={"X-API-Key": key}) as answer:
                assert answer.status_code == 200
                _, end = read_until_end(sse(answer))
            assert end["status"] == "complete"


def test_the_plain_log_is_unchanged(start_lab: StartLab) -> None:
    """Without Accept: text/event-stream or ?follow=true the log is the text it was: its
    lines, each ending in a newline, as text/plain."""
    lab = start_lab(boards=[6])
    job = submit(lab, 6, b"# ECHO:hello\n# a design\n")
    with client(lab) as c:
        c.wait(6, job, timeout=20)
    with httpx.Client(base_url=lab.url, trust_env=False, timeout=20) as http:
        for ask in ({}, {"headers": {"Accept": "text/plain"}}, {"params": {"follow": "false"}}):
            answer = http.get(f"/fpga/6/jobs/{job}/logs", **ask)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            assert answer.text.endswith("\n") and "hello\n" in answer.text
            assert answer.text.count("data:") == 0
        with stream(http, f"/fpga/6/jobs/{job}/logs") as streamed:
            lines, _ = read_until_end(sse(streamed))
        assert [line for _, line in lines_of(lines)] == answer.text.splitlines()


#: Lines a design (or a worker that no longer splits lines) might put in a log to forge
#: events: each must arrive as one line, as it was.
HOSTILE = [
    "\n\ndata: fake\n\n",
    'event: end\ndata: {"status": "complete"}\n\n',
    "id: 999999\r\rdata: x\r\n\r\n",
    "\rretry: 1",
    ": comment\u2028data: y\u2029\x85\x00\x1b[31m",
    '"quoted" \\ back',
    "",
]


def test_hostile_lines_cannot_forge_events(start_lab: StartLab) -> None:
    """Lines holding CR, LF, field names, NUL or Unicode line separators arrive each as
    one event's data, exactly as they were written, and the only end is the lab's."""
    lab = start_lab(boards=[7])
    job = submit(lab, 7, b"# ECHO:event: end\n# ECHO:data: forged\n# a design\n")
    with client(lab) as c:
        c.wait(7, job, timeout=20)

    async def append() -> None:  # past the worker, which splits lines: raw into the log
        store = Store.from_url(lab.settings.redis_url or "", lab.settings)
        try:
            await store.append_logs(job, HOSTILE)
        finally:
            await store.close()

    asyncio.run(append())
    with (
        httpx.Client(base_url=lab.url, trust_env=False, timeout=20) as http,
        stream(http, f"/fpga/7/jobs/{job}/logs") as answer,
    ):
        events, end = read_until_end(sse(answer))
    got = [line for _, line in lines_of(events)]
    assert got[-len(HOSTILE) :] == HOSTILE
    assert "event: end" in got and "data: forged" in got
    assert end["status"] == "complete"


def test_line_numbers_stay_true_when_the_log_is_trimmed(
    start_lab: StartLab, talking: Talking
) -> None:
    """A log trimmed to its most recent lines keeps each line's number: the stream
    starts at the first line kept, numbered as it was, and resumes by those numbers."""
    lab = start_lab(backend=talking, boards=[8], max_log_lines=10)
    job = submit(lab, 8)
    for i in range(500):
        talking.lines.put(f"line {i}")
    talking.lines.put(None)
    with client(lab) as c:
        c.wait(8, job, timeout=20)
    with httpx.Client(base_url=lab.url, trust_env=False, timeout=20) as http:
        plain = http.get(f"/fpga/8/jobs/{job}/logs").text.splitlines()
        with stream(http, f"/fpga/8/jobs/{job}/logs") as answer:
            events, _ = read_until_end(sse(answer))
        got = lines_of(events)
        with stream(http, f"/fpga/8/jobs/{job}/logs", params={"after": got[-5][0]}) as answer:
            tail, _ = read_until_end(sse(answer))
    assert len(plain) < 500 and [line for _, line in got] == plain
    numbers = [n for n, _ in got]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    by_text = {line: n for n, line in got if line.startswith("line ")}
    assert all(
        by_text[line] - int(line.split()[1]) == by_text["line 499"] - 499 for line in by_text
    )
    assert lines_of(tail) == got[-4:]


def test_a_log_begun_before_line_numbers_still_takes_lines(settings: Settings) -> None:
    """A log a lab from before line numbers began (time ids) takes appended lines."""

    async def check() -> list[str]:
        store = Store.from_url(settings.redis_url or "", settings)
        try:
            await store.redis.xadd(keys.log("old"), {"l": "old line"})
            await store.append_logs("old", ["new line"])
            return await store.logs("old")
        finally:
            await store.close()

    assert asyncio.run(check()) == ["old line", "new line"]


def settled(now: Any, expected: Any, timeout: float = 5.0) -> None:
    """Wait until ``now()`` is ``expected`` (what another thread changes)."""
    deadline = time.monotonic() + timeout
    while (seen := now()) != expected:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)


def test_a_stream_given_up_leaves_nothing_behind(start_lab: StartLab, talking: Talking) -> None:
    """A follower that goes away mid-build is no longer followed by the API: its
    registrations for wake-ups are gone."""
    lab = start_lab(backend=talking, boards=[9])
    job = submit(lab, 9)
    talking.lines.put("one")
    with Api(lab.settings) as api, httpx.Client(base_url=api.url, trust_env=False) as http:
        notices, waiters = api.app.state.log_notices, api.app.state.waiters
        for _ in range(3):
            with stream(http, f"/fpga/9/jobs/{job}/logs") as answer:
                events = sse(answer)  # kept: a generator dropped closes the answer
                next_line(events)
                settled(lambda: (notices.following, waiters.waiting), (1, 1))
        settled(lambda: (notices.following, waiters.waiting), (0, 0))


def test_a_slow_reader_is_read_for_as_it_reads(start_lab: StartLab, talking: Talking) -> None:
    """A follower that stops reading a long log holds the API's reads back: the API reads
    from Redis about what the connection's buffers hold (the kernel's, up to a few MiB
    on loopback), not the whole log."""
    lab = start_lab(backend=talking, boards=[1], max_log_bytes=64 << 20)
    job = submit(lab, 1)
    lines = 60_000  # 12 MiB: more than loopback's socket buffers take
    for i in range(lines):
        talking.lines.put(f"{i:06d} " + "x" * 200)
    talking.lines.put(None)
    with client(lab) as c:
        c.wait(1, job, timeout=60)
    with Api(lab.settings) as api:
        store, read = api.app.state.store, []
        log_since, log_lines = store.log_since, store.log_lines

        async def counted_since(*args: Any) -> Any:
            answer = await log_since(*args)
            read.extend(answer[2])
            return answer

        async def counted_lines(*args: Any) -> Any:
            answer = await log_lines(*args)
            read.extend(answer)
            return answer

        store.log_since, store.log_lines = counted_since, counted_lines
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect(("127.0.0.1", api.settings.port))
            reader.sendall(
                f"GET /fpga/1/jobs/{job}/logs HTTP/1.1\r\nHost: lab\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            assert reader.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(1)  # and read no more
            stalled = len(read)
            reader.settimeout(10)
            tail = b""
            while not tail.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                tail = (tail + reader.recv(1 << 20))[-16:]
    assert len(read) > lines  # all of it, once read for
    assert stalled < lines // 2, stalled  # while stalled: what the buffers took


def test_open_streams_do_not_hold_a_stopping_api(start_lab: StartLab) -> None:
    """An API with event streams open stops within its shutdown grace (the streams are
    ended; their clients resume elsewhere), not when they end, which is never."""
    lab = start_lab(shutdown_grace=1.0)
    opened = threading.Semaphore(0)

    def listen() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.Client(base_url=lab.url, trust_env=False, timeout=60) as c,
            c.stream("GET", "/events") as r,
        ):
            opened.release()
            for _ in r.iter_lines():
                pass

    readers = [threading.Thread(target=listen, daemon=True) for _ in range(3)]
    for reader in readers:
        reader.start()
    for _ in readers:
        assert opened.acquire(timeout=10)
    started = time.monotonic()
    lab.stop()
    assert time.monotonic() - started < 8
    for reader in readers:
        reader.join(5)
        assert not reader.is_alive()  # its stream was ended


def test_a_head_never_opens_a_stream(start_lab: StartLab) -> None:
    """HEAD with ``Accept: text/event-stream`` (or ``?follow=true``) of a running job's
    log answers at once with the plain log's head, instead of holding the stream open."""
    lab = start_lab()
    with httpx.Client(base_url=lab.url, trust_env=False, timeout=10) as c:
        job = c.post("/fpga/0/submit", files={"file": ("d.py", b"# d\nDesign = None\n")}).json()
        path = f"/fpga/0/jobs/{job['job_id']}/logs"
        for r in (
            c.head(path, headers={"Accept": "text/event-stream"}),
            c.head(path, params={"follow": "true"}),
        ):
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
