"""The dashboard (``/ui``): three static files, served with a Content-Security-Policy that
allows nothing but this origin (no inline script, no other host), and ``GET /whoami``,
which tells the page who it is signed in as. The page itself is docs/dashboard.md."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from fpgalab.service.deps import CallerDep
from fpgalab.service.errors import NotFound
from fpgalab.service.handlers import responses
from fpgalab.service.models import WhoAmI

router = APIRouter(tags=["dashboard"])

#: The page's files and their types: nothing else is served from the folder.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: Scripts, styles, images, fetches and event streams from this origin only; no inline
#: script or style, no plugin, no frame, no form posted elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    data = resources.files("fpgalab.service").joinpath("ui", name).read_bytes()
    return Response(data, media_type=FILES[name], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return _file("index.html")


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in FILES:
        raise NotFound("not_found", f"No dashboard file {name!r}.")
    return _file(name)


@router.get("/whoami", response_model=WhoAmI, responses=responses())
async def whoami(caller: CallerDep) -> WhoAmI:
    """Who the key (or the dashboard's sign-in) names, and whether it is an admin."""
    return WhoAmI(name=caller.name, admin=caller.admin)
