"""Builds the FastAPI application: ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from fpgalab.service import handlers
from fpgalab.service.auth import KeyRing
from fpgalab.service.bodylimit import MUTATING, BodyLimit
from fpgalab.service.events import EventHub
from fpgalab.service.guard import MutationGuard
from fpgalab.service.head import HeadAsGet
from fpgalab.service.logfollow import LogNotices
from fpgalab.service.metrics import ApiMetrics, RequestTimer
from fpgalab.service.routes import audit, boards, health, jobs, pools, sessions, ui
from fpgalab.service.routes import events as event_routes
from fpgalab.service.routes import login as login_routes
from fpgalab.service.routes import metrics as metrics_route
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from fpgalab.service.waiters import JobWaiters

log = logging.getLogger("fpgalab.api")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

DESCRIPTION = """\
A lab of FPGA boards (`GET /fpga` lists them: ids 0-9 by default, each with its platform
and tags). Upload a design to a board, or to a pool (`POST /submit`: the first free
board of a platform and tags); the lab builds it into a LiteX SoC and programs a board
reserved for your session; run Wishbone reads and writes on it; reset or release it.
Every call that touches hardware is a job: `202` and a `job_id` to follow at
`/fpga/{fpga_id}/jobs/{job_id}` (or `/jobs/{job_id}`).

Errors always have the shape `{"detail": {"error": CODE, "message": TEXT}}`.

Calls that change something (POST, DELETE) are rate-limited per caller (`429
rate_limited` with `Retry-After`; runs on a board the caller's session holds have a
limit of their own), their bodies capped (`413`), and each one is recorded in an audit
trail that admins read at `/audit`.

`GET /health` says how many boards are ready; a board not checked yet (a lab just
started) takes submits, and runs them once it is up.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keyring = KeyRing.from_settings(settings)  # a bad keys entry stops the start here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.from_url(settings.redis_url or DEFAULT_REDIS_URL, settings)
        app.state.store = store
        app.state.waiters = waiters = JobWaiters(store.redis)
        waiters.start()
        # one reader of the event log for all GET /events clients, blocking half a deadline
        app.state.events = event_hub = EventHub(
            store.redis, settings.event_client_buffer, int(settings.redis_timeout * 500)
        )
        app.state.log_notices = log_notices = LogNotices(store.redis)
        log_notices.start()
        if keyring.open:
            log.warning("no API keys configured: the lab is OPEN, every caller is an admin")
        else:
            log.info("%d API keys configured", len(keyring))
        # What exists now (the app, its routes and models, every module) lives as long as
        # the process: out of the cyclic collector's reach, whose full passes over it held
        # every request and event in flight for 50-85 ms (benches/events.py: p99 event
        # delivery to 100 clients 58-63 ms before, 22-28 ms after, in a throwaway copy).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await log_notices.close()
            await event_hub.close()
            await waiters.close()
            await store.close()

    app = FastAPI(
        title="fpgalab",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # no 307 from /fpga/3/ to http://<whatever Host said>/fpga/3: an unknown path is a 404
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    handlers.install(app)
    modules = (health, boards, pools, jobs, sessions, audit, ui, event_routes, login_routes)
    mutating = [
        route
        for module in modules
        for route in module.router.routes
        if isinstance(route, APIRoute) and (route.methods or set()) & MUTATING
    ]
    # the last added runs first: the guard sees (and audits) what the body limit refuses
    app.add_middleware(BodyLimit)
    app.add_middleware(MutationGuard, routes=mutating, trusted_proxies=settings.trusted_proxies)
    app.add_middleware(HeadAsGet)
    for module in modules:
        handlers.document_unknown_boards(module.router.routes)
        app.include_router(module.router)
    # GET /metrics, and every request timed by route (outermost: refusals count too)
    app.state.metrics = api_metrics = ApiMetrics()
    app.include_router(metrics_route.router)
    routes = [r for m in (*modules, metrics_route) for r in m.router.routes]
    app.add_middleware(RequestTimer, metrics=api_metrics, routes=routes)
    return app
