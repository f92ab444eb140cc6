"""The lab's events for ``GET /events``: one reader per API process of the event log
(``keys.EVENT_LOG``, written by the Lua scripts that make each change), fanned out to
each client's bounded queue, and each client's replay from the id it resumes from.

One reader, not a blocking ``XREAD`` per client: a hundred dashboards hold one Redis
connection between them (``redis_max_connections`` caps them all), and an event is read
from Redis once per process, parsed once, and its JSON sent to every client as written.
A client's queue holds at most ``event_client_buffer`` events; one that falls that far
behind is sent ``lagged`` (the id to resume from) and disconnected, never buffered
without bound. The log is durable and capped: a resume id older than its oldest entry is
answered with a ``gap`` event before what is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.sse import ServerSentEvent
from redis.exceptions import RedisError, ResponseError

from fpgalab.service import keys
from fpgalab.service.waiters import RETRY_DELAY, stop

log = logging.getLogger("fpgalab.api")

#: Entries read from the log in one call (the live reader's and a replay's pages).
PAGE = 500


def id_key(stream_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq``, or ``ms``) as a pair that sorts as the stream does."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def before(stream_id: str) -> str:
    """The id just before ``stream_id``: resuming after it replays ``stream_id`` too."""
    ms, seq = id_key(stream_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event log: its id, kind (``board`` or ``job``), the JSON the
    script wrote, and what a client's filter looks at."""

    id: str
    kind: str
    data: str
    fpga_id: int | None
    job_id: str | None
    owner: str | None

    @classmethod
    def parse(cls, entry_id: str, fields: dict[str, str]) -> Event | None:
        try:
            body = json.loads(fields["e"])
            kind = str(body["kind"])
        except (KeyError, ValueError, TypeError):
            return None
        fpga_id = body.get("fpga_id")
        return cls(
            entry_id,
            kind,
            fields["e"],
            fpga_id if isinstance(fpga_id, int) else None,
            body.get("job_id"),
            body.get("owner"),
        )

    def sse(self) -> ServerSentEvent:
        return ServerSentEvent(id=self.id, event=self.kind, raw_data=self.data)


@dataclass(frozen=True)
class Filter:
    """What one client sees: every board's events, job events of its own jobs (all of
    them for an admin), narrowed to one board or one job if it asked."""

    caller: str
    admin: bool = False
    fpga_id: int | None = None
    job_id: str | None = None

    def allows(self, event: Event) -> bool:
        if self.fpga_id is not None and event.fpga_id != self.fpga_id:
            return False
        if event.kind == "job":
            if not self.admin and event.owner != self.caller:
                return False
            return self.job_id is None or event.job_id == self.job_id
        return self.job_id is None


@dataclass(eq=False)
class Subscriber:
    """One client's place in the fan-out: its filter, its bounded queue, and whether it
    fell behind."""

    filter: Filter
    queue: asyncio.Queue[Event]
    lagged: bool = False
    closed: bool = False
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    """The event log's reader of one API process and the clients it feeds."""

    def __init__(self, redis: Any, buffer: int, block_ms: int) -> None:
        self._redis = redis
        self._buffer = buffer
        self._block_ms = block_ms
        self._subscribers: set[Subscriber] = set()
        self._cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._closing = False

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    async def close(self) -> None:
        self._closing = True  # checked by the reader's loop (see ``waiters.stop``)
        await stop(self._task)
        for sub in self._subscribers:
            sub.closed = True
            sub.woken.set()

    @contextlib.asynccontextmanager
    async def subscribe(self, filter: Filter) -> AsyncIterator[Subscriber]:
        """A client's subscription: every event the reader reads from now on is offered
        to it. The reader starts with the first client (a lab nobody has watched costs
        nothing) and then reads on until the process stops (one blocked connection, and
        each event parsed once, whether anyone is left to take it or not). Its cursor is
        read before the first client is told it is subscribed, so every entry after it
        reaches the queue, and a replay read after this covers what came before."""
        sub = Subscriber(filter, asyncio.Queue(self._buffer))
        self._subscribers.add(sub)
        try:
            await self._start()
            yield sub
        finally:
            self._subscribers.discard(sub)

    async def _start(self) -> None:
        async with self._starting:
            if self._task is not None and not self._task.done():
                return
            if self._cursor is None:
                self._cursor = await last_id(self._redis)
            self._task = asyncio.create_task(self._read(), name="event-hub")

    async def _read(self) -> None:
        while not self._closing:
            try:
                reply = await self._redis.xread(
                    {keys.EVENT_LOG: self._cursor}, count=PAGE, block=self._block_ms
                )
            except (RedisError, OSError) as exc:
                # the log keeps what is written meanwhile: read on from the cursor once back
                log.warning("events: reading the event log failed, retrying: %s", exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    self._cursor = entry_id
                    event = Event.parse(entry_id, fields)
                    if event is not None:
                        self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        for sub in list(self._subscribers):
            if sub.lagged or not sub.filter.allows(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.lagged = True  # told at its next turn, then disconnected
                self._subscribers.discard(sub)
            sub.woken.set()


async def last_id(redis: Any) -> str:
    """The id of the log's newest entry (``0-0`` if it is empty)."""
    newest = await redis.xrevrange(keys.EVENT_LOG, count=1)
    return str(newest[0][0]) if newest else "0-0"


async def _trimmed_past(redis: Any, after: str) -> tuple[bool, str | None]:
    """Whether entries after ``after`` may have left the log (trimmed by its cap), and the
    oldest id it still holds. Redis keeps how many entries were ever added: if the log
    holds fewer, those before its first entry are gone, and a resume before that entry
    may have missed some (or none, if ``after`` was the very last one trimmed: told
    too, since it cannot be known)."""
    try:
        info = await redis.xinfo_stream(keys.EVENT_LOG)
    except ResponseError:  # no log at all: nothing was ever added, nothing missed
        return False, None
    first_entry = info.get("first-entry")
    first = str(first_entry[0]) if first_entry else None
    if int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
        return False, first
    oldest_kept = first or str(info.get("last-generated-id") or "0-0")
    if first is None:  # all trimmed: the last ever added is gone too
        return id_key(after) < id_key(oldest_kept), None
    return id_key(after) < id_key(before(first)), first


async def stream(redis: Any, sub: Subscriber, after: str | None) -> AsyncIterator[ServerSentEvent]:
    """A client's events: those after ``after`` still in the log, then live ones as the
    reader offers them, each once and in order. Without ``after``, only live ones: those
    the reader offers from the client's subscription on (no replay, so nothing twice)."""
    if after is None:
        sent, cursor = (0, 0), None
    else:
        missed, first = await _trimmed_past(redis, after)
        if missed:
            yield ServerSentEvent(
                event="gap", raw_data=json.dumps({"after": after, "first": first})
            )
        sent, cursor = id_key(after), after
    # the replay, a page at a time: a slow client is read from Redis no faster than it reads
    while cursor is not None:
        page = await redis.xrange(keys.EVENT_LOG, min=f"({cursor}", count=PAGE)
        for entry_id, fields in page:
            cursor = entry_id
            event = Event.parse(entry_id, fields)
            if event is not None and sub.filter.allows(event):
                yield event.sse()
            sent = id_key(entry_id)
            if sub.lagged:
                break
        if len(page) < PAGE or sub.lagged:
            break
    while not sub.closed:
        if sub.lagged:
            if cursor is None:  # nothing sent yet: resume before the first event it missed
                cursor = before(sub.queue.get_nowait().id) if sub.queue.qsize() else "0-0"
            yield ServerSentEvent(
                id=cursor, event="lagged", raw_data=json.dumps({"resume_after": cursor})
            )
            return
        try:
            event = sub.queue.get_nowait()
        except asyncio.QueueEmpty:
            sub.woken.clear()
            await sub.woken.wait()
            continue
        if id_key(event.id) <= sent:
            continue  # the replay sent it already
        sent = id_key(event.id)
        cursor = event.id
        yield event.sse()
