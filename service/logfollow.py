"""Live logs (``GET /fpga/{id}/jobs/{job_id}/logs`` as Server-Sent Events): a job's log
lines as the worker appends them, each with its line number as event id, then one
``end`` event with the job's status.

A line's number is its entry id in the log's stream (``0-N``, see ``append.lua``), so
it stays true when the log's start is trimmed, and any API replica resumes a stream
another one served (``Last-Event-ID``) from Redis alone.

Waking without polling: ``append.lua`` publishes the job's id on ``keys.LOG_NOTICES``
once per append (the worker appends what it buffered every ``LOG_FLUSH``, so a busy
build costs one message per 0.1 s, not one per line); one subscription per API process
fans it out to the streams that follow that job. The job's end wakes them through
``JobWaiters`` (the ``job`` event of the script that ends it). As in ``waiters.py``, a
(re)established subscription wakes every follower to read again, and a follower also
reads again every ``PING`` seconds whatever happens: a lost message costs delay,
never a line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from redis.exceptions import RedisError

from fpgalab.service import keys
from fpgalab.service.store import Store
from fpgalab.service.waiters import FINISHED, RETRY_DELAY, JobWaiters, Wakers

log = logging.getLogger("fpgalab.api")

#: Most lines read from Redis at once for one stream: what a stream holds in memory
#: beyond what the connection buffers (the next chunk is read once these are sent).
CHUNK = 100
#: Seconds a follower waits for a wake-up before it sends a keep-alive comment (proxies
#: close a silent connection) and reads the log and the job again.
PING = 15.0
#: Event type of the last event of a stream; its data is the job's status and error.
END = "end"


class LogNotices(Wakers):
    """The live-log streams of one API process, woken when their job's log grows."""

    channel = keys.LOG_NOTICES
    what = "log-notices"

    @property
    def following(self) -> int:
        """Streams following a log now."""
        return self.watching


async def follow(
    store: Store, waiters: JobWaiters, notices: LogNotices, job_id: str, after: int
) -> AsyncIterator[bytes]:
    """The job's log lines numbered past ``after``, then those appended as they come,
    then an ``end`` event once the job has finished: the bytes of an event stream, a
    chunk of up to ``CHUNK`` lines at a time.

    Each chunk is read from Redis once the previous one is sent: a slow reader holds back
    the reads (uvicorn stops taking bytes while the socket is full), it does not make
    this buffer the log. The events of a chunk go out in one write: one write per event
    (``fastapi.sse``'s generator routes) ran at about 4,000 lines/s, a 100,000-line log
    replayed in 25 s."""
    with waiters.watch(job_id) as woken, notices.watch(job_id, woken):
        while True:
            woken.clear()  # before the reads: what happens during them wakes us again
            try:
                # the status first: the worker writes a job's last lines before its end,
                # so once it has ended, the lines read after it are all there are
                status, error, lines = await store.log_since(job_id, after, CHUNK)
                while lines:
                    yield b"".join(_line(number, line) for number, line in lines)
                    after = lines[-1][0]
                    if len(lines) < CHUNK:
                        break
                    lines = await store.log_lines(job_id, after, CHUNK)
            except RedisError as exc:
                log.warning("live log of job %s: redis error, retrying: %s", job_id, exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            if status is None or status in FINISHED:  # None: its retention ended
                end = json.dumps({"status": status, "error": error or None})
                yield format_sse_event(event=END, data_str=end)
                return
            try:
                await asyncio.wait_for(woken.wait(), PING)
            except TimeoutError:
                yield KEEPALIVE_COMMENT  # and read again: a wake-up lost costs only time


def _line(number: int, line: str) -> bytes:
    # JSON data (ASCII, every control character escaped): no character of a line can
    # end the event or start another
    return format_sse_event(data_str=json.dumps(line), id=str(number))
