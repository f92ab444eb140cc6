"""What the lab counts for ``GET /metrics``, in Redis, and reading it back at a scrape.

Job outcomes, the durations of a job's phases, build cache use and rate-limit refusals
are counted by the Lua scripts in one hash (``keys.METRICS``), in the same call that makes
the change they count: a job's end is counted once (a worker's retried ``finish`` is
``stale`` the second time), by whichever process ended it, and every API replica reads the
same numbers. They are never derived from job records (those expire after
``job_retention``, and a counter must not go down) nor kept in one process (a worker's
restart would reset them, and the API never sees a job end).

A field of the hash is ``NAME|LABEL VALUES`` (a counter; label values comma-separated),
or ``NAME|LABEL VALUES|PART`` (a histogram): PART is the bucket's index, counting from 1
(``len(DURATION_BUCKETS) + 1`` is ``+Inf``), or ``sum``. A bucket counts the
observations that fell in it alone; the scrape makes them cumulative, and their total
is the count (a ``count`` part, which earlier versions wrote, is not read).

Like the store's ``audit`` and ``rate_limiter``, ``read_lab`` reads the key layout of
``service.keys`` directly (through the store's client), in one pipeline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fpgalab.service import keys

if TYPE_CHECKING:
    from fpgalab.service.store import Store

#: Upper bounds of every duration histogram (seconds): a cache hit's build and a run take
#: milliseconds, a full build minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0,
)  # fmt: skip

#: How a job ended: its final status, or ``lost`` (failed because its worker died).
OUTCOMES = ("complete", "failed", "cancelled", "lost")
#: Phases a worker times (backend calls that returned); ``build`` is labelled by cache use.
PHASES = ("build", "program", "run", "reset")
#: Whose bucket refused a mutating call (``service.ratelimit``).
BUCKETS = ("caller", "own_board", "unknown_key")


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    sum: float = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at most le) per bucket, ``+Inf`` last."""
        out, total = [], 0
        for le, n in zip((*map(str, DURATION_BUCKETS), "+Inf"), self.counts, strict=True):
            total += n
            out.append((le, float(total)))
        return out


@dataclass
class Counts:
    """The hash, parsed: counters and histograms by name and label values."""

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    histograms: dict[str, dict[tuple[str, ...], Histogram]] = field(default_factory=dict)

    def counter(self, name: str, *labels: str) -> float:
        return self.counters.get(name, {}).get(labels, 0.0)

    def histogram(self, name: str, *labels: str) -> Histogram:
        return self.histograms.get(name, {}).get(labels) or Histogram()


def parse(flat: dict[str, str]) -> Counts:
    counts = Counts()
    for name_field, value in flat.items():
        name, _, rest = name_field.partition("|")
        labels_text, _, part = rest.partition("|")
        labels = tuple(labels_text.split(",")) if labels_text else ()
        if not part:
            counts.counters.setdefault(name, {})[labels] = float(value)
            continue
        h = counts.histograms.setdefault(name, {}).setdefault(labels, Histogram())
        if part == "sum":
            h.sum = float(value)
        elif part.isdigit() and 1 <= int(part) <= len(h.counts):
            h.counts[int(part) - 1] = int(value)
    return counts


@dataclass
class LabReading:
    """The lab at one scrape."""

    boards: list[tuple[int, dict[str, str], str | None]]
    queued: dict[int, int]
    running: int
    heartbeat_age: dict[str, float]
    counts: Counts
    redis_round_trip: float
    seconds: float = 0.0


async def read_lab(store: Store) -> LabReading:
    """Everything ``GET /metrics`` reports of the lab, in three round trips: a PING (timed:
    the Redis round trip), the boards (one script call), and one pipeline of the queues,
    the counts and the heartbeats of the workers holding boards."""
    began = time.perf_counter()
    await store.ping()
    round_trip = time.perf_counter() - began
    boards = await store.boards()
    workers = sorted({w for _, _, w in boards if w})
    ids = [i for i, _, _ in boards]
    pipe = store.redis.pipeline(transaction=False)
    for i in ids:
        pipe.scard(keys.queued(i))
    pipe.zcard(keys.RUNNING)
    pipe.hgetall(keys.METRICS)
    for w in workers:
        pipe.pttl(keys.worker(w))
        pipe.get(keys.worker(w))
    replies = await pipe.execute()
    n = len(ids)
    queued = dict(zip(ids, map(int, replies[:n]), strict=True))
    running, flat, beats = int(replies[n]), replies[n + 1], replies[n + 2 :]
    ages = {}
    for w, pttl, info in zip(workers, beats[::2], beats[1::2], strict=True):
        if pttl is None or int(pttl) < 0:
            continue  # gone between the two reads
        try:
            ttl = float(json.loads(info or "{}").get("ttl", store.settings.worker_heartbeat_ttl))
        except (ValueError, AttributeError):
            ttl = store.settings.worker_heartbeat_ttl
        ages[w] = max(0.0, ttl - int(pttl) / 1000)
    return LabReading(
        boards=boards,
        queued=queued,
        running=running,
        heartbeat_age=ages,
        counts=parse(flat),
        redis_round_trip=round_trip,
        seconds=time.perf_counter() - began,
    )


__all__ = [
    "BUCKETS",
    "DURATION_BUCKETS",
    "OUTCOMES",
    "PHASES",
    "LabReading",
    "read_lab",
]
