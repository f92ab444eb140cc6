"""Every error code of docs/api.md is a class of the client's, and the client raises it
when the lab answers it: made to happen for real against a served lab wherever a client
can make it happen (the three the HTTP server answers before the app to requests httpx
never sends, and a bug's 500, are read from answers built here)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

import fpgalab.client as fc
from fpgalab.client import Client, Read
from tests.client.conftest import ALICE, BOB, DESIGN, KEYS, OPS, LiveLab, StartLab, client
from tests.fakes import FakeBackend
from tests.helpers import REPO, RedisServer

#: docs/api.md's error table: ``| 409 | `fpga_not_idle` | when |``.
ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \|", re.MULTILINE)


def documented() -> dict[str, int]:
    found = {code: int(status) for status, code in ROW.findall((REPO / "docs/api.md").read_text())}
    assert len(found) > 30, "docs/api.md's error table was not found"
    return found


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    """An answer as the lab would send it (for the errors no client request can cause)."""
    request = httpx.Request("GET", "http://lab/x")
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_every_documented_code_has_its_class() -> None:
    """Each code in docs/api.md's error table has a LabError class of the documented
    status, and the client knows no code the table does not document."""
    codes = documented()
    assert set(fc.ERRORS_BY_CODE) == set(codes)
    for code, status in codes.items():
        cls = fc.ERRORS_BY_CODE[code]
        assert issubclass(cls, fc.LabError) and status == cls.STATUS, (code, cls)
        assert cls.__name__ in fc.__all__, f"{cls.__name__} is not exported"


@pytest.mark.parametrize("code", sorted(documented()))
def test_an_answer_becomes_its_codes_class(code: str) -> None:
    """An error answer of each documented code is raised as its class, carrying status,
    code, message and the response."""
    status = documented()[code]
    response = answer(status, {"detail": {"error": code, "message": f"it was {code}"}})
    error = fc._errors.error_for(response)
    assert type(error) is fc.ERRORS_BY_CODE[code]
    assert (error.status, error.code, error.message) == (status, code, f"it was {code}")
    assert error.response is response and str(error) == f"{status} {code}: it was {code}"


def test_a_new_code_gets_its_status_class_and_a_foreign_page_the_base() -> None:
    """A code this client does not know yet is raised as its status's class (a 409 as
    Conflict); an answer not in the lab's shape (a proxy's 502) as LabError, code None."""
    new = fc._errors.error_for(answer(409, {"detail": {"error": "fpga_on_fire", "message": "m"}}))
    assert type(new) is fc.Conflict and new.code == "fpga_on_fire"
    request = httpx.Request("GET", "http://lab/x")
    page = fc._errors.error_for(httpx.Response(502, text="<html>bad gateway", request=request))
    assert type(page) is fc.LabError and page.code is None and page.status == 502
    assert fc._errors.error_for(answer(429, {}, {"Retry-After": "7"})).retry_after == 7


# Made to happen, in an open lab -------------------------------------------------------------


def test_open_lab_refusals(fake_lab: LiveLab, lab_client: Client) -> None:
    """Validation, unknown jobs, routes and methods, a missing session, a board in the
    wrong state, refused uploads and an oversized head are each raised as their class."""
    lab = lab_client
    cases = [
        (fc.ValidationError, lambda: lab.board(10_000)),
        (fc.FpgaNotFound, lambda: lab.board(10)),
        (fc.JobNotFound, lambda: lab.job(0, "no-such-job")),
        (fc.NoActiveSession, lambda: lab.session(3)),
        (fc.NoActiveSession, lambda: lab.release(3)),
        (fc.FpgaNotReserved, lambda: lab.run(0, Read(0x2000_0000))),
        (fc.FpgaNotResettable, lambda: lab.reset(0)),
        (fc.UnsupportedDesign, lambda: lab.submit(2, b"x = 1\n", filename="x.txt")),
        (fc.EmptyDesign, lambda: lab.submit(2, b" \n", filename="empty.py")),
        (fc.DesignNotText, lambda: lab.submit(2, b"\xff\xfe", filename="bin.py")),
        (fc.RouteNotFound, lambda: lab.request("GET", "/no/such/route")),
        (fc.MethodNotAllowed, lambda: lab.request("PUT", "/health")),
        (fc.RequestHeaderTooLarge,
         lambda: lab.request("GET", "/health", headers={"X-Pad": "a" * 20_000})),
    ]  # fmt: skip
    for cls, call in cases:
        with pytest.raises(cls) as raised:
            call()
        assert raised.value.code == cls.CODE and raised.value.status == cls.STATUS


def test_board_state_conflicts(fake_lab: LiveLab, backend: FakeBackend) -> None:
    """A busy board refuses a submit (fpga_not_idle), its build's map and result are not
    there yet (memory_map_unknown, job_not_complete), a taken build cannot be cancelled,
    a run with another session id is session_mismatch, and a board in maintenance is
    fpga_unavailable."""
    with client(fake_lab) as lab:
        building = lab.submit(4, b"# GATE\n", filename="gated.py")
        assert backend.gate_reached.wait(10)
        with pytest.raises(fc.FpgaNotIdle):
            lab.submit(4, DESIGN, filename="d.py")
        with pytest.raises(fc.MemoryMapUnknown):
            lab.memory_map(4)
        with pytest.raises(fc.JobNotComplete):
            lab.result(4, building.job_id)
        with pytest.raises(fc.JobNotCancellable):
            lab.cancel(4, building.job_id)
        backend.release_gate()
        lab.wait(4, building.job_id, timeout=10)
        with pytest.raises(fc.SessionMismatch):
            lab.run(4, Read(0x2000_0000), session_id="not-the-session")
        lab.maintenance(5, "a loose cable")
        with pytest.raises(fc.FpgaUnavailable, match="a loose cable"):
            lab.submit(5, DESIGN, filename="d.py")


def test_an_idempotency_key_for_another_request(lab_client: Client) -> None:
    """The same Idempotency-Key replays the same submit, and is refused for another
    design (idempotency_key_reused)."""
    first = lab_client.submit(6, DESIGN, filename="d.py", idempotency_key="k-1")
    again = lab_client.submit(6, DESIGN, filename="d.py", idempotency_key="k-1")
    assert again.job_id == first.job_id and again.replayed and not first.replayed
    with pytest.raises(fc.IdempotencyKeyReused):
        lab_client.submit(6, b"# another\n", filename="d.py", idempotency_key="k-1")


def test_a_renew_at_the_maximum_lifetime(start_lab: StartLab) -> None:
    """A session whose maximum lifetime is its length cannot be renewed."""
    lab = start_lab(session_ttl=60, session_max_lifetime=60)
    with client(lab) as c:
        board = c.reserve(0, DESIGN, filename="d.py")
        with board, pytest.raises(fc.SessionRenewLimit):
            board.renew()


def test_size_limits(start_lab: StartLab) -> None:
    """An upload over the lab's limit is design_too_large; a run body over the body limit
    is request_too_large."""
    lab = start_lab(max_upload_bytes=100, max_body_bytes=1024)
    with client(lab) as c:
        with pytest.raises(fc.DesignTooLarge):
            c.submit(0, b"#" * 200, filename="big.py")
        with c.reserve(0, DESIGN, filename="d.py") as board, pytest.raises(fc.RequestTooLarge):
            board.write(0x2000_0000, [0xFFFF_FFFF] * 500)


def test_a_full_board_queue(start_lab: StartLab, backend: FakeBackend) -> None:
    """A run past the board's queue limit is too_many_queued_jobs (raised at once with no
    retry budget)."""
    lab = start_lab(max_queued_per_board=1)
    with client(lab, retry_budget=0) as c, c.reserve(0, DESIGN, filename="d.py") as board:
        backend.hold.add("transact")
        c.run(0, Read(0x2000_0000), session_id=board.session_id)  # taken, held
        assert backend.held.wait(10)
        c.run(0, Read(0x2000_0000), session_id=board.session_id)  # queued
        with pytest.raises(fc.TooManyQueuedJobs):
            c.run(0, Read(0x2000_0000), session_id=board.session_id)
        backend.resume.set()


# Made to happen, in a lab with keys ---------------------------------------------------------


def test_keys_and_rights(keyed_lab: LiveLab) -> None:
    """A wrong or missing key is invalid_api_key; admin routes refuse a non-admin
    (admin_required); acting on another caller's session is not_session_owner."""
    for key in ("wrong-key", ""):
        with client(keyed_lab, api_key=key) as nobody, pytest.raises(fc.InvalidApiKey):
            nobody.boards()
    with client(keyed_lab, api_key=ALICE) as alice, client(keyed_lab, api_key=BOB) as bob:
        with pytest.raises(fc.AdminRequired):
            alice.maintenance(0)
        with pytest.raises(fc.AdminRequired):
            alice.audit()
        with alice.reserve(1, DESIGN, filename="d.py"), pytest.raises(fc.NotSessionOwner):
            bob.release(1)
    with client(keyed_lab, api_key=OPS) as ops:
        assert {e.action for e in ops.audit(caller="bob")} == {"release"}


def test_caller_limits(start_lab: StartLab) -> None:
    """A caller over its boards is too_many_boards, over its rate rate_limited (with no
    retry budget)."""
    lab = start_lab(api_keys=KEYS, max_boards_per_caller=1, rate_limit=0.01, rate_limit_burst=5)
    with client(lab, api_key=ALICE) as alice:
        alice.reserve(0, DESIGN, filename="d.py")
        with pytest.raises(fc.TooManyBoards):
            alice.submit(1, DESIGN, filename="d.py")
    with client(lab, api_key=BOB, retry_budget=0) as bob, pytest.raises(fc.RateLimited) as limited:
        for _ in range(10):
            with contextlib.suppress(fc.NoActiveSession):
                bob.renew(5)  # no session there: refused, and counted all the same
    assert limited.value.retry_after and limited.value.retry_after > 1


def test_a_storage_budget_spent(start_lab: StartLab) -> None:
    """A caller over its storage budget is storage_budget_exceeded, raised at once (its
    Retry-After is past any retry budget)."""
    lab = start_lab(api_keys=KEYS, storage_budget_bytes=10)
    with client(lab, api_key=BOB) as bob:
        bob.submit(0, DESIGN, filename="d.py")  # takes the window past its budget
        started = time.monotonic()
        with pytest.raises(fc.StorageBudgetExceeded):
            bob.submit(1, DESIGN, filename="d.py")
    assert time.monotonic() - started < 5


# Made to happen, with the lab's Redis -------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (to fill, or to stop)."""
    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    yield server
    server.stop()


def test_redis_full_and_unavailable(start_lab: StartLab, own_redis: RedisServer) -> None:
    """A lab whose Redis is full refuses a submit with redis_full (Retry-After 60: past
    the retry budget, raised at once); one whose Redis is down answers
    redis_unavailable."""
    lab = start_lab(redis_url=own_redis.url, boards=[0])
    with redis.Redis.from_url(own_redis.url) as r, client(lab, retry_budget=5) as c:
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 64 * 1024)
        try:
            n = 0
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                while n < 10_000:
                    r.set(f"filler:{n}", "x" * 10_000)
                    n += 1
            # past it for sure: the refused write's buffer, freed, may leave a little room
            # (as tests/service/test_memory.py does)
            r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 64 * 1024)
            with pytest.raises(fc.RedisFull) as full:
                c.submit(0, DESIGN, filename="d.py")
            assert full.value.retry_after == 60
        finally:
            r.config_set("maxmemory", 0)
            r.delete(*[f"filler:{i}" for i in range(n)])
    own_redis.stop()
    with client(lab, retry_budget=0) as c, pytest.raises(fc.RedisUnavailable):
        c.boards()
    own_redis.start()  # for the lab's teardown
