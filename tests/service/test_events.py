"""``GET /events`` through real HTTP (uvicorn on loopback, a worker on the FakeBackend,
a real Redis), and the event log the Lua scripts write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from fpgalab.service import keys
from fpgalab.service.events import EventHub, Filter, before, stream
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.client.conftest import ALICE, BOB, DESIGN, KEYS, OPS, LiveLab
from tests.fakes import FakeBackend

BOARD = 2


@dataclass
class Sse:
    event: str = "message"
    id: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def body(self) -> Any:
        return json.loads(self.data)


def read_sse(response: httpx.Response) -> Iterator[Sse]:
    """The events of an SSE answer as they come (comments ride on the next event, or on
    an event of their own when a blank line ends them)."""
    current = Sse()
    seen = False
    for line in response.iter_lines():
        if line == "":
            if seen:
                yield current
            current, seen = Sse(), False
            continue
        seen = True
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            current.comments.append(value)
            current.event = "comment"
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            current.data = value if not current.data else current.data + "\n" + value


@pytest.fixture
def live(settings: Settings, backend: FakeBackend) -> Iterator[LiveLab]:
    """A keyed lab (alice, bob, ops the admin) on loopback, board 2 served."""
    lab = LiveLab(settings.model_copy(update={"api_keys": KEYS}), backend, [BOARD, 3]).start()
    yield lab
    lab.stop()


def http(lab: LiveLab, key: str) -> httpx.Client:
    return httpx.Client(base_url=lab.url, headers={"X-API-Key": key}, trust_env=False, timeout=15)


def until(events: Iterator[Sse], done: Any) -> list[Sse]:
    """Events read until one for which ``done`` is true (included)."""
    got = []
    for e in events:
        got.append(e)
        if done(e):
            return got
    raise AssertionError(f"the stream ended after {got}")


def board_is(state: str) -> Any:
    return lambda e: e.event == "board" and e.body.get("state") == state


def submit(c: httpx.Client, design: bytes = DESIGN, fpga_id: int = BOARD) -> str:
    r = c.post(f"/fpga/{fpga_id}/submit", files={"file": ("top.py", design)})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def kinds(events: list[Sse]) -> list[tuple[str, str]]:
    """(kind, state or status) of each board or job event that carries one."""
    out = []
    for e in events:
        if e.event == "board" and "state" in e.body:
            out.append(("board", e.body["state"]))
        elif e.event == "job":
            out.append(("job", e.body["status"]))
    return out


def test_a_build_and_release_are_told_in_order_with_ids(live: LiveLab) -> None:
    """Submit, build, reserved, release: the board's and the job's events arrive in order,
    with increasing ids, the session and current job in them."""
    with http(live, ALICE) as c, c.stream("GET", "/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
        job = submit(c)
        got = until(events, board_is("reserved"))
        assert c.post(f"/fpga/{BOARD}/session/release").status_code == 202
        got += until(events, board_is("idle"))
    order = kinds(got)
    assert order[:2] == [("job", "queued"), ("board", "queued")]
    assert order.index(("job", "running")) < order.index(("board", "programming"))
    assert order.index(("board", "reserved")) < order.index(("board", "resetting"))
    assert order[-1] == ("board", "idle")
    ids = [e.id for e in got]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == len(ids)
    opened = got[1].body
    assert opened["session"] == "opened" and opened["session_owner"] == "alice"
    assert opened["current_job_id"] == job and opened["fpga_id"] == BOARD
    assert all(isinstance(e.body["at"], float) for e in got)
    ended = [e.body for e in got if e.body.get("session") == "ended"]
    assert len(ended) == 1
    queued = got[0].body
    assert queued["job_id"] == job and queued["owner"] == "alice"
    assert queued["type"] == "build_and_program"


def test_a_client_that_reconnects_with_last_event_id_gets_every_event_once(
    live: LiveLab, backend: FakeBackend
) -> None:
    """A client cut off mid-build that reconnects with Last-Event-ID gets exactly the
    events an uninterrupted client gets, in the same order."""
    with http(live, ALICE) as c, c.stream("GET", "/events") as whole:
        everything = read_sse(whole)
        with c.stream("GET", "/events") as first:
            part = read_sse(first)
            submit(c, DESIGN + b"# GATE\n")
            got = until(part, board_is("programming"))
        # cut off; meanwhile the build ends and the board is released
        backend.release_gate()
        full = until(everything, board_is("reserved"))
        assert c.post(f"/fpga/{BOARD}/session/release").status_code == 202
        full += until(everything, board_is("idle"))
        resumed = {"Last-Event-ID": str(got[-1].id)}
        with c.stream("GET", "/events", headers=resumed) as second:
            got += until(read_sse(second), board_is("idle"))
    assert [e.id for e in got] == [e.id for e in full]
    assert [e.data for e in got] == [e.data for e in full]


def test_after_replays_then_goes_live(live: LiveLab) -> None:
    """``?after=`` replays the events after that id, then the live ones follow."""
    with http(live, ALICE) as c:
        with c.stream("GET", "/events") as r:
            events = read_sse(r)
            submit(c)
            got = until(events, board_is("reserved"))
        with c.stream("GET", "/events", params={"after": got[0].id}) as r:
            events = read_sse(r)
            replayed = until(events, board_is("reserved"))
            assert [e.id for e in replayed] == [e.id for e in got[1:]]
            assert c.post(f"/fpga/{BOARD}/session/release").status_code == 202
            live_events = until(events, board_is("idle"))
    assert ("board", "resetting") in kinds(live_events)


def test_filters_and_visibility(live: LiveLab) -> None:
    """Bob sees every board's events but not alice's job events; ``?fpga_id=`` and
    ``?job_id=`` narrow a stream; an admin sees every job; a job of someone else's is
    403, an unknown one 404."""
    with http(live, ALICE) as alice, http(live, BOB) as bob, http(live, OPS) as ops:
        with (
            bob.stream("GET", "/events") as b,
            ops.stream("GET", "/events", params={"fpga_id": 3}) as o3,
            alice.stream("GET", "/events", params={"fpga_id": BOARD}) as a2,
        ):
            job = submit(alice)
            bob_saw = until(read_sse(b), board_is("reserved"))
            alice_saw = until(read_sse(a2), board_is("reserved"))
            other = submit(bob, fpga_id=3)
            ops_saw = until(read_sse(o3), board_is("reserved"))
        assert all(e.event == "board" for e in bob_saw)
        assert ("job", "running") in kinds(alice_saw)
        assert {e.body["fpga_id"] for e in alice_saw} == {BOARD}
        assert {e.body["fpga_id"] for e in ops_saw} == {3}
        assert any(e.event == "job" and e.body["job_id"] == other for e in ops_saw)

        r = bob.get("/events", params={"job_id": job})
        assert r.status_code == 403 and r.json()["detail"]["error"] == "not_session_owner"
        r = bob.get("/events", params={"job_id": "nosuchjob"})
        assert r.status_code == 404
        assert bob.get("/events", params={"after": "x"}).status_code == 422
        assert httpx.get(f"{live.url}/events", trust_env=False).status_code == 401

        # alice's own job: replayed from the start, its events only
        with alice.stream("GET", "/events", params={"job_id": job, "after": "0"}) as r:
            mine = until(read_sse(r), lambda e: e.body.get("status") == "complete")
        assert {(e.event, e.body["job_id"]) for e in mine} == {("job", job)}
        assert [e.body["status"] for e in mine] == ["queued", "running", "complete"]


def test_keep_alive_comments_on_a_quiet_stream(
    live: LiveLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet stream carries keep-alive comments."""
    monkeypatch.setattr("fastapi.routing._PING_INTERVAL", 0.2)
    with http(live, ALICE) as c, c.stream("GET", "/events") as r:
        first = next(read_sse(r))
    assert first.event == "comment" and first.comments == ["ping"]


def test_a_resume_older_than_the_log_is_told_as_a_gap(live: LiveLab) -> None:
    """Resuming from an id the capped log no longer holds starts with a ``gap`` event
    naming the oldest id still there, then what is left."""
    with http(live, ALICE) as c:
        with c.stream("GET", "/events") as r:
            events = read_sse(r)
            submit(c)
            got = until(events, board_is("reserved"))
        with redis.Redis.from_url(live.settings.redis_url or "", decode_responses=True) as rd:
            rd.xtrim(keys.EVENT_LOG, maxlen=2, approximate=False)
            kept = [i for i, _ in rd.xrange(keys.EVENT_LOG)]
        with c.stream("GET", "/events", params={"after": got[0].id}) as r:
            events = read_sse(r)
            gap = next(events)
            rest = [next(events) for _ in kept]
    assert gap.event == "gap" and gap.id is None
    assert gap.body == {"after": got[0].id, "first": kept[0]}
    assert [e.id for e in rest] == kept


async def test_a_client_too_slow_is_told_where_to_resume(store: Store) -> None:
    """A client whose queue is full is sent ``lagged`` with the id to resume after, and
    resuming there replays what it missed."""
    hub = EventHub(store.redis, buffer=2, block_ms=200)
    ids = []
    try:
        async with hub.subscribe(Filter("alice")) as sub:
            for n in range(5):
                body = json.dumps({"kind": "board", "fpga_id": 1, "n": n})
                ids.append(await store.redis.xadd(keys.EVENT_LOG, {"e": body}))
            for _ in range(100):
                if sub.lagged:
                    break
                await asyncio.sleep(0.02)
            assert sub.lagged and hub.clients == 0
            told = [e async for e in stream(store.redis, sub, None)]
        assert [(e.event, e.id) for e in told] == [("lagged", before(ids[0]))]
        async with hub.subscribe(Filter("alice")) as sub:
            replay = stream(store.redis, sub, json.loads(told[0].raw_data or "")["resume_after"])
            again = [await anext(replay) for _ in ids]
            await replay.aclose()
        assert [e.id for e in again] == ids
    finally:
        await hub.close()


def test_before_is_the_previous_stream_id() -> None:
    """The id before ``ms-0`` is the last possible id of the previous millisecond."""
    assert before("5-3") == "5-2"
    assert before("5-0") == f"4-{2**64 - 1}"


async def test_the_scripts_keep_the_event_log_capped(settings: Settings) -> None:
    """The scripts that make a change trim the event log as they append to it: after
    thousands of changes it holds about ``event_log_max_entries`` (Redis trims whole
    nodes of 100 entries: never more than one node over), the newest of them, and
    counts every one that was ever added."""
    store = Store.from_url(settings.redis_url or "", settings.model_copy(
        update={"event_log_max_entries": 300}))  # fmt: skip
    added = int((await store.redis.xinfo_stream(keys.EVENT_LOG))["entries-added"])
    try:
        for i in range(1_000):  # a board into maintenance and back, a board event each
            mode = "maintenance" if i % 2 == 0 else "online"
            await store.set_health(BOARD, mode, "maintenance" if i % 2 == 0 else "good", "t")
        info = await store.redis.xinfo_stream(keys.EVENT_LOG)
        newest = await store.redis.xrevrange(keys.EVENT_LOG, count=1)
    finally:
        await store.close()
    assert info["entries-added"] == added + 1_000
    assert 300 <= info["length"] <= 400, info["length"]
    assert info["last-generated-id"] == newest[0][0]
    assert json.loads(newest[0][1]["e"])["health"] == "good"  # the last change is there
