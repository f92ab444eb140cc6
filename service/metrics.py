"""Prometheus metrics: the lab's, read from Redis at each scrape (so that any API replica
answers for the whole lab), and this API process's own (request latency by route, and
its ``process_*``/``python_*`` collectors).

Every metric is listed in docs/operations.md ("Metrics"); a test parses a scrape with
the client library's parser and checks names, types and labels against that list.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fpgalab.service.measures import BUCKETS, OUTCOMES, PHASES, LabReading
from fpgalab.service.states import BoardState, Health, JobType
from fpgalab.service.store import board_ready

#: Latency buckets of the API's own requests (seconds).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The route label of a request no route matched (a 404): paths are not labels.
UNMATCHED = "unmatched"
#: Methods named in the method label; any other is ``other`` (a client picks the method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def lab_families(lab: LabReading) -> list[Metric]:
    """The lab's metrics from one reading of Redis."""
    out: list[Metric] = []

    boards = GaugeMetricFamily(
        "fpgalab_boards", "Boards by state and health.", labels=["state", "health"]
    )
    tally = {(s.value, h.value): 0 for s in BoardState for h in Health}
    for _, record, _ in lab.boards:
        found = (record.get("state", BoardState.IDLE), record.get("health", Health.UNKNOWN))
        tally[found] = tally.get(found, 0) + 1
    for (state, health), n in sorted(tally.items()):
        boards.add_metric([state, health], n)
    out.append(boards)

    ready = GaugeMetricFamily(
        "fpgalab_board_ready",
        "1 if the board is up: held by a live worker that checked it, health good.",
        labels=["board"],
    )
    queued = GaugeMetricFamily(
        "fpgalab_board_queued_jobs", "Jobs waiting in the board's queue.", labels=["board"]
    )
    for i, record, worker in lab.boards:
        ready.add_metric([str(i)], float(board_ready(record, worker)))
        queued.add_metric([str(i)], lab.queued.get(i, 0))
    out += [ready, queued]

    out.append(GaugeMetricFamily("fpgalab_jobs_running", "Jobs taken by a worker.", lab.running))
    ages = GaugeMetricFamily(
        "fpgalab_worker_heartbeat_age_seconds",
        "Seconds since each live worker's last heartbeat (a worker holding boards).",
        labels=["worker"],
    )
    for worker, age in sorted(lab.heartbeat_age.items()):
        ages.add_metric([worker], age)
    out.append(ages)
    out.append(
        GaugeMetricFamily(
            "fpgalab_redis_round_trip_seconds",
            "A PING's round trip to Redis from this API process, at this scrape.",
            lab.redis_round_trip,
        )
    )

    counts = lab.counts
    finished = CounterMetricFamily(
        "fpgalab_jobs_finished",
        "Jobs ended, by type and outcome (final status, or lost: its worker died).",
        labels=["type", "outcome"],
    )
    for jtype in JobType:
        for outcome in OUTCOMES:
            finished.add_metric(
                [jtype.value, outcome], counts.counter("jobs_finished", jtype, outcome)
            )
    out.append(finished)
    out.append(
        CounterMetricFamily(
            "fpgalab_build_cache_hits",
            "Builds answered from the build cache.",
            counts.counter("build_cache", "hit"),
        )
    )
    out.append(
        CounterMetricFamily(
            "fpgalab_build_cache_misses",
            "Builds that ran (not in the build cache).",
            counts.counter("build_cache", "miss"),
        )
    )
    refused = CounterMetricFamily(
        "fpgalab_rate_limit_refusals",
        "Mutating calls refused 429 rate_limited, by the bucket that refused them.",
        labels=["bucket"],
    )
    for bucket in BUCKETS:
        refused.add_metric([bucket], counts.counter("rate_limited", bucket))
    out.append(refused)

    wait = HistogramMetricFamily(
        "fpgalab_job_queue_wait_seconds",
        "From a job's submission to a worker taking it.",
        labels=["type"],
    )
    for jtype in JobType:
        h = counts.histogram("queue_wait", jtype)
        wait.add_metric([jtype.value], h.cumulative(), h.sum)
    out.append(wait)
    for phase in PHASES:
        what = {
            "build": "Builds (backend calls that returned), by cache use.",
            "program": "Programming a board with a build.",
            "run": "A run job's transactions on the board.",
            "reset": "Resetting a board to the base SoC.",
        }[phase]
        labels = ["cache"] if phase == "build" else []
        family = HistogramMetricFamily(f"fpgalab_{phase}_duration_seconds", what, labels=labels)
        for values in (["hit"], ["miss"]) if phase == "build" else ([],):
            h = counts.histogram(phase, *values)
            family.add_metric(values, h.cumulative(), h.sum)
        out.append(family)

    out.append(
        GaugeMetricFamily(
            "fpgalab_metrics_read_seconds",
            "Time this scrape took to read the lab from Redis.",
            lab.seconds,
        )
    )
    return out


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class ApiMetrics:
    """One API process's own metrics (an app's: tests build many apps in one process,
    so never the library's global registry for what is per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "fpgalab_http_request_duration_seconds",
            "Seconds from a request's arrival to its answer's status and headers, by route "
            "template, method and status class.",
            ["route", "method", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def render(self, lab: LabReading) -> bytes:
        """The exposition text: the lab, this process's requests, and the process."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(lab_families(lab)))
        registry.register(_Fixed(self.registry.collect()))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(_Fixed(collector.collect()))
        return generate_latest(registry)


def _route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    route = scope.get("route")
    if route is None:  # not routed on this scope: a HEAD (asked as a GET on a copy), a 404,
        partial = None  # a 405 (whose path matched a route, not its method)
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    return str(getattr(route, "path", UNMATCHED))


class RequestTimer:
    """ASGI middleware: each request's latency into ``ApiMetrics.requests``, labelled by
    the route's template (``/fpga/{fpga_id}``), never the raw path, so that the label's
    values are bounded; ``routes``: the app's routes, for a request the router did not
    mark. Timed to the answer's start: a stream (SSE) counts its opening."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 0

        async def timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and not status:
                status = int(message["status"])
                self._observe(scope, status, time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            if not status:  # no answer started: the server answers 500
                self._observe(scope, 500, time.perf_counter() - began)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        self.metrics.requests.labels(
            route=_route_template(scope, self.routes),
            method=scope["method"] if scope["method"] in METHODS else "other",
            status=f"{status // 100}xx",
        ).observe(seconds)
