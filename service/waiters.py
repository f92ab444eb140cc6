"""Waiting for a job to finish without polling (``GET /fpga/{id}/jobs/{job_id}?wait=S``):
one subscription per API process to the lab's event channel, fanned out to the requests
that wait.

Every script that ends a job (``finish``, ``cancel``/``reset``, ``lost``, ``take``) publishes
its ``job`` event in the same atomic step that writes the status, so an event says the
record is written. One subscription, not a blocking read per waiter: a thousand waiting
requests hold no Redis connection of their own (a ``BLPOP`` each would hold a thousand,
and each its socket deadline), cost Redis and the worker nothing, and wake within a
millisecond of the event. A waiter registers before it reads the job, so a finish after
that read wakes it; events published while the subscription is down are not replayed,
so each time it is (re)established (``subscribe`` confirmed, also after redis-py
reconnects on its own) every waiter is woken to read its job again: no wake-up is lost.
Whatever wakes it, a waiter answers with the record as Redis has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from redis.exceptions import RedisError

from fpgalab.service import keys
from fpgalab.service.states import JobStatus

log = logging.getLogger("fpgalab.api")

T = TypeVar("T")

#: The longest a request may wait for its job (seconds).
MAX_WAIT = 30.0
#: Job statuses that end a wait: the job has finished.
FINISHED = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})
#: Seconds between attempts to subscribe while Redis is away.
RETRY_DELAY = 0.5
#: How long one read of the subscription waits for a message (seconds): bounds how long
#: a health check (a PING, every ``health_check_interval``) waits to be sent.
_POLL = 1.0


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a reader task and wait for it to end. Its owner sets a closing flag first,
    which the task's loop checks: on Python 3.11 a cancellation that lands as a read
    completes can be swallowed (CPython gh-86296), and the loop would read on."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Wakers:
    """One Redis channel of one API process, fanned out to the requests that wait on it:
    a request registers an ``asyncio.Event`` under a job id (``watch``) before it reads
    what it waits for; a message that ``_job_of`` names that job sets its events; each
    time the subscription is (re)established, every event is set (messages published
    while it was down are not replayed). ``JobWaiters`` and the live logs' ``LogNotices``
    are its two channels."""

    #: The channel, and the task's name in logs.
    channel = ""
    what = ""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._watching: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._listen(), name=self.what)

    async def close(self) -> None:
        self._closing = True
        await stop(self._task)
        self._wake_all()

    @property
    def watching(self) -> int:
        """Requests registered now."""
        return sum(len(events) for events in self._watching.values())

    @contextlib.contextmanager
    def watch(self, job_id: str, event: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
        """``event`` (a new one by default), set when a message names ``job_id``; register
        it before reading, so that a change after the read is not missed."""
        event = event or asyncio.Event()
        self._watching.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._watching.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._watching[job_id]

    def _job_of(self, data: str) -> str | None:
        """The job a message is about, if it is one to wake its watchers for."""
        return data

    def _wake_all(self) -> None:
        for events in self._watching.values():
            for event in events:
                event.set()

    async def _listen(self) -> None:
        while not self._closing:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while not self._closing:
                        message = await pubsub.get_message(timeout=_POLL)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            self._wake_all()  # (again): messages before now may be missed
                        elif message["type"] == "message":
                            job_id = self._job_of(message["data"])
                            for event in self._watching.get(job_id or "", ()):
                                event.set()
            except (RedisError, OSError) as exc:
                # watchers still end at their deadline; they are woken once this is back
                log.warning("%s: the subscription failed, retrying: %s", self.what, exc)
                await asyncio.sleep(RETRY_DELAY)


class JobWaiters(Wakers):
    """The requests of one API process that wait for a job to finish."""

    channel = keys.EVENTS
    what = "job-waiters"

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return self.watching

    async def until_finished(
        self,
        job_id: str,
        wait: float,
        read: Callable[[], Awaitable[T]],
        finished: Callable[[T], bool],
    ) -> T:
        """``read()`` once the job has finished (``finished`` of what it read says so), or
        as it is after ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        with self.watch(job_id) as woken:  # before the read: a finish after it wakes us
            answer = await read()
            while not finished(answer):
                try:
                    await asyncio.wait_for(woken.wait(), deadline - loop.time())
                except TimeoutError:
                    return await read()  # as it is at the deadline
                woken.clear()
                answer = await read()
        return answer

    def _job_of(self, data: str) -> str | None:
        try:
            event = json.loads(data)
            job_id, status = event.get("job_id"), event.get("status")
        except (ValueError, AttributeError):
            return None
        woken = status in FINISHED or event.get("placed") is True  # a pool job's board
        return job_id if woken and isinstance(job_id, str) else None
