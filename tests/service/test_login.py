"""The dashboard's login cookie (``POST /login``), through real HTTP with the access log
on: a key never reaches a URL, a log or the cookie."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from fpgalab.service import login, server
from fpgalab.service.app import create_app
from fpgalab.service.auth import Caller, KeyRing, parse_entries
from fpgalab.service.settings import Settings
from tests.client.conftest import ALICE, BOB, KEYS
from tests.helpers import free_port


@contextlib.contextmanager
def served(settings: Settings) -> Iterator[str]:
    """The API alone under uvicorn on loopback, its access log on."""
    s = settings.model_copy(update={"api_keys": KEYS, "host": "127.0.0.1", "port": free_port()})
    config = server.config(
        create_app(s), s, log_level="info", access_log=True, log_config=None
    )  # fmt: skip
    api = uvicorn.Server(config)
    thread = threading.Thread(target=api.run, name="login-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not api.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{s.port}"
    finally:
        api.should_exit = True
        thread.join(15)


def test_a_login_cookie_reads_the_lab_and_no_key_reaches_the_access_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """``POST /login`` with the key sets an HttpOnly, SameSite=Strict cookie holding no
    key; it is taken by GET /events and GET /fpga, never by a mutating call; a key put
    in a URL is no key; the access log names no key."""
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    with served(settings) as url, httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
        r = c.post("/login", headers={"X-API-Key": ALICE})
        assert r.status_code == 200, r.text
        assert r.json()["caller"] == "alice" and r.json()["admin"] is False
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{login.COOKIE}=")
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        assert ALICE not in cookie

        assert c.get("/fpga").status_code == 200  # the cookie, no header
        with c.stream("GET", "/events") as events:
            assert events.status_code == 200
        # a cookie never acts: a change needs the key (a cross-site form cannot)
        assert c.post("/fpga/1/reset").status_code == 401
        # a key in the query string names nobody: nothing invites it into a URL
        c.cookies.clear()
        assert c.get("/fpga", params={"api_key": BOB}).status_code == 401
        forged = {"Cookie": f"{login.COOKIE}=forged.1.x"}
        assert c.get("/fpga", headers=forged).status_code == 401
        assert c.post("/logout").status_code == 401
        c.post("/login", headers={"X-API-Key": ALICE})
        gone = c.post("/logout")
        assert gone.status_code == 204 and "Max-Age=0" in gone.headers["set-cookie"]
    logged = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/events" in line for line in logged) and any("/login" in line for line in logged)
    # bob's key was put in a URL by the test above: the lab logs paths, and it was refused
    assert not any(ALICE in line for line in logged)


def test_a_token_ends_with_its_time_or_its_callers_key() -> None:
    """A token is refused once expired, once its caller's key changed, or tampered with."""
    ring = KeyRing(parse_entries(["alice=k1", "ops=k2:admin"], "test"))
    token, _ = login.issue(ring, Caller("alice"), "s", ttl=60)
    assert login.verify(ring, token, "s") == Caller("alice")
    assert login.verify(ring, token, "other secret") is None
    changed = KeyRing(parse_entries(["alice=k3", "ops=k2:admin"], "test"))
    assert login.verify(changed, token, "s") is None
    expired, _ = login.issue(ring, Caller("alice"), "s", ttl=-1)
    assert login.verify(ring, expired, "s") is None
    _, expires, mac = token.split(".")
    as_ops = f"{login._b64(b'ops')}.{expires}.{mac}"
    assert login.verify(ring, as_ops, "s") is None
    assert "k1" not in token


def test_without_a_configured_secret_the_lab_makes_its_own(settings: Settings) -> None:
    """No ``FPGALAB_LOGIN_SECRET``: the lab signs with a random secret of its own, kept in
    Redis — a cookie from one API replica is taken by another, and a token signed with
    the key digests alone (what an empty secret would have been) is refused."""
    with served(settings) as first, served(settings) as second:
        with httpx.Client(base_url=first, trust_env=False) as c:
            assert c.post("/login", headers={"X-API-Key": ALICE}).status_code == 200
            cookie = c.cookies[login.COOKIE]
        with httpx.Client(base_url=second, trust_env=False) as c:
            c.cookies.set(login.COOKIE, cookie)
            assert c.get("/whoami").json() == {"name": "alice", "admin": False}
            ring = KeyRing(parse_entries(KEYS.split(","), "test"))
            forged, _ = login.issue(ring, Caller("alice"), "", ttl=600)
            c.cookies.set(login.COOKIE, forged)
            assert c.get("/whoami").status_code == 401
