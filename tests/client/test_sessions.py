"""Board sessions: reserve, read and write, renew, release — and the board given back
whatever ends the block: an exception, Ctrl-C, a failed build, Ctrl-C during the build."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import fpgalab.client as fc
from fpgalab.client import Client
from tests.client.conftest import DESIGN, LiveLab, StartLab, board_state, client, wait_idle
from tests.fakes import FakeBackend

USER = 0x2000_0000


class Interrupt(httpx.HTTPTransport):
    """A test double of Ctrl-C: the first request whose path holds ``path`` raises
    KeyboardInterrupt instead of being sent, as if the user pressed it just then."""

    def __init__(self, path: str) -> None:
        super().__init__(retries=0)
        self.path: str | None = path

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.path is not None and self.path in request.url.path:
            self.path = None
            raise KeyboardInterrupt
        return super().handle_request(request)


class Unplugged(httpx.HTTPTransport):
    """A test double of a cable pulled: while ``down``, nothing connects."""

    down = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return super().handle_request(request)


def test_a_session_reads_writes_and_releases(fake_lab: LiveLab, lab_client: Client) -> None:
    """reserve builds and programs the design and hands back the session; writes and
    reads are its jobs; the block's end releases the board, which goes idle."""
    with lab_client.reserve(3, DESIGN, filename="d.py") as board:
        assert board.fpga_id == 3 and board.build is not None and board.build.ok
        assert board_state(fake_lab, 3)["session"]["session_id"] == board.session_id
        board.write(USER, [5, 7])
        board.write(USER + 8, 9)
        assert board.read(USER, 3) == [5, 7, 9]
        assert board.region("user").base == USER and USER in board.region("user")
        assert board.read("user", 2) == [5, 7]  # a region's name is its base
        assert "fake: elaborating d.py" in list(board.logs())
    assert board.released and board.release_job is not None
    lab_client.wait(3, board.release_job.job_id, timeout=10)
    assert wait_idle(fake_lab, 3)["state"] == "idle"


def test_an_exception_releases_the_board(fake_lab: LiveLab, lab_client: Client) -> None:
    """An exception raised in the block goes on, and the board is released."""
    with pytest.raises(ZeroDivisionError), lab_client.reserve(4, DESIGN, filename="d.py"):
        1 / 0  # noqa: B018
    wait_idle(fake_lab, 4)


def test_ctrl_c_releases_the_board(fake_lab: LiveLab, lab_client: Client) -> None:
    """KeyboardInterrupt raised in the block goes on, and the board is released."""
    with pytest.raises(KeyboardInterrupt), lab_client.reserve(5, DESIGN, filename="d.py") as b:
        b.write(USER, [1])
        raise KeyboardInterrupt
    wait_idle(fake_lab, 5)


def test_ctrl_c_during_a_queued_build_cancels_it(start_lab: StartLab) -> None:
    """Ctrl-C while a build waits in its board's queue (board 7 has no worker here)
    cancels the build, which frees the board and ends the session."""
    lab = start_lab(boards=[0, 1])
    with client(lab, transport=Interrupt("/jobs/")) as c, pytest.raises(KeyboardInterrupt):
        c.reserve(7, DESIGN, filename="d.py")
    row = board_state(lab, 7)
    assert row["state"] == "idle" and row["session"] is None


def test_ctrl_c_during_a_running_build_releases_after_it(
    fake_lab: LiveLab, backend: FakeBackend
) -> None:
    """Ctrl-C while a worker builds (no longer cancellable) waits for the build to end,
    then releases the board."""
    threading.Timer(0.5, backend.release_gate).start()
    with client(fake_lab, transport=Interrupt("/jobs/")) as c, pytest.raises(KeyboardInterrupt):
        c.reserve(6, b"# GATE\n", filename="gated.py")
    assert backend.gate.is_set()
    wait_idle(fake_lab, 6)


def test_a_failed_build_raises_with_its_log_and_gives_the_board_back(
    fake_lab: LiveLab, lab_client: Client
) -> None:
    """A design that does not build raises JobFailed carrying the job and its log's
    tail, and the board (in error) is released."""
    with pytest.raises(fc.JobFailed) as failed:
        lab_client.reserve(2, b"# FAIL_BUILD\n", filename="broken.py")
    assert failed.value.job.status == "failed" and failed.value.job.fpga_id == 2
    assert "SyntaxError" in str(failed.value)
    assert "fake: design.py:3: SyntaxError: invalid syntax" in failed.value.log_tail
    wait_idle(fake_lab, 2)


def test_a_failed_release_is_a_note_on_the_exception(fake_lab: LiveLab) -> None:
    """When the release at the end of a failing block fails too, the block's exception
    goes on, the release's failure added to it as a note."""
    network = Unplugged(retries=0)
    with client(fake_lab, transport=network) as c:
        with pytest.raises(RuntimeError) as raised, c.reserve(1, DESIGN, filename="d.py"):
            network.down = True
            raise RuntimeError("the test failed")
        assert "releasing FPGA 1 failed too" in raised.value.__notes__[0]
        network.down = False
        assert c.session(1).owner == "anonymous"  # still held: the expiry is the backstop


def test_release_is_explicit_too_and_happens_once(fake_lab: LiveLab, lab_client: Client) -> None:
    """release(wait=True) returns once the board is idle; a second release (or the block's
    end) sends nothing more; calls on a released session are refused."""
    with lab_client.reserve(8, DESIGN, filename="d.py") as board:
        job = board.release(wait=True)
        assert job is not None and board_state(fake_lab, 8)["state"] == "idle"
        assert board.release() == job
        with pytest.raises(RuntimeError, match="released"):
            board.read(USER)


def test_a_session_ended_elsewhere_is_released_quietly(
    fake_lab: LiveLab, lab_client: Client
) -> None:
    """A session reset by someone else (here, a reset through another call) ends the block
    without an error."""
    with lab_client.reserve(9, DESIGN, filename="d.py") as board:
        lab_client.reset(9)
    assert board.released and board.release_job is None


def test_renew_explicitly_and_before_a_call_near_the_end(start_lab: StartLab) -> None:
    """renew() extends the session; a call made when less than a third of the session is
    left renews it first."""
    lab = start_lab(session_ttl=3)
    with client(lab) as c, c.reserve(0, DESIGN, filename="d.py") as board:
        first = c.session(0).expires_at
        renewed = board.renew(60)
        assert (renewed.expires_at - first).total_seconds() > 50
        assert board.renew(2).expires_at == renewed.expires_at  # never shortened
    with client(lab) as c, c.reserve(1, DESIGN, filename="d.py") as board:
        first = c.session(1).expires_at
        time.sleep(2.2)  # 0.8 s left of 3: under a third
        board.read(USER)
        assert c.session(1).expires_at > first


def test_attach_to_a_session_opened_elsewhere(fake_lab: LiveLab, lab_client: Client) -> None:
    """attach hands back the board's current session (as another process opened it); a
    session id that is not the board's is refused."""
    accepted = lab_client.submit(2, DESIGN, filename="d.py")
    lab_client.wait(2, accepted.job_id, timeout=10)
    board = lab_client.attach(2)
    assert board.session_id == accepted.session_id and board.build is None
    board.write(USER, [3])
    assert lab_client.attach(2, accepted.session_id).read(USER) == [3]
    with pytest.raises(fc.SessionMismatch):
        lab_client.attach(2, "another-session")
    board.release(wait=True, timeout=10)


def test_reserve_any_board(start_lab: StartLab) -> None:
    """reserve(None) takes an idle board a worker serves (never one without a worker);
    with none left it waits its turn in the lab's pool, and past its build_timeout
    raises NoIdleBoard."""
    lab = start_lab(boards=[0, 1])
    with (
        client(lab) as c,
        c.reserve(None, DESIGN, filename="d.py") as first,
        c.reserve(None, DESIGN, filename="d.py") as second,
    ):
        assert {first.fpga_id, second.fpga_id} == {0, 1}
        with pytest.raises(fc.NoIdleBoard, match=r"found no board within 0\.5 s"):
            c.reserve(None, DESIGN, filename="d.py", build_timeout=0.5)


def test_wait_times_out_and_follows_logs(fake_lab: LiveLab, backend: FakeBackend) -> None:
    """wait(timeout) raises JobTimeout with the job as last seen; logs(follow=True)
    yields the lines a running build has written, then the rest as they come, and ends
    when the build does."""
    with client(fake_lab) as lab:
        accepted = lab.submit(3, b"# GATE\n", filename="gated.py")
        assert backend.gate_reached.wait(10)
        with pytest.raises(fc.JobTimeout) as late:
            lab.wait(3, accepted.job_id, timeout=0.3)
        assert late.value.job.status == "running"
        lines = lab.logs(3, accepted.job_id, follow=True)
        early = [next(lines), next(lines)]  # what it wrote before the gate, while it runs
        assert early[1] == "fake: elaborating gated.py", early
        assert not lab.job(3, accepted.job_id).finished
        backend.release_gate()
        rest = list(lines)
        assert rest[0] == "fake: verilating" and "fake: board 3 programmed" in rest, rest
        assert lab.job(3, accepted.job_id).ok
        assert early + rest == list(lab.logs(3, accepted.job_id))


def test_reserve_waits_for_a_board_being_reset(start_lab: StartLab, backend: FakeBackend) -> None:
    """A board whose session has just ended is still being reset: reserve (of that board,
    or of any board) waits for the reset and takes it."""
    lab = start_lab(boards=[0])
    backend.hold.add("reset")
    with client(lab) as c:
        for wanted in (0, None):
            backend.resume.clear()
            with c.reserve(0, DESIGN, filename="d.py") as first:
                pass
            assert board_state(lab, 0)["state"] == "resetting"
            threading.Timer(0.5, backend.resume.set).start()
            with c.reserve(wanted, DESIGN, filename="d.py") as second:
                assert second.fpga_id == 0 and second.session_id != first.session_id
            backend.resume.set()
            wait_idle(lab, 0)  # the second session's reset, before the next round holds it
