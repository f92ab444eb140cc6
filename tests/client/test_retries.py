"""Retries: 429 and 503 are retried after Retry-After within the client's budget; a
replayable call whose answer was lost is sent again with the same Idempotency-Key, and the
lab makes one job of it; a lab that is not there is said at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

import fpgalab.client as fc
from fpgalab.client import Write
from tests.client.conftest import (
    ALICE,
    DESIGN,
    KEYS,
    LiveLab,
    StartLab,
    async_client,
    client,
)
from tests.helpers import RedisServer, free_port


class LoseAnswers(httpx.HTTPTransport):
    """A test double of a network that loses answers: the first request to a path
    ending in one of ``paths`` reaches the lab and is carried out, and its answer is
    dropped on the way back (``ReadError``). Records every request it sees."""

    def __init__(self, *paths: str) -> None:
        super().__init__(retries=0)
        self.paths = set(paths)
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        response = super().handle_request(request)
        lose = next((p for p in self.paths if request.url.path.endswith(p)), None)
        if lose is None:
            return response
        self.paths.discard(lose)
        response.read()
        response.close()
        raise httpx.ReadError("the connection dropped before the answer arrived")


class AsyncLoseAnswers(httpx.AsyncHTTPTransport):
    """``LoseAnswers`` for the AsyncClient (a test double)."""

    def __init__(self, *paths: str) -> None:
        super().__init__(retries=0)
        self.paths = set(paths)
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        response = await super().handle_async_request(request)
        lose = next((p for p in self.paths if request.url.path.endswith(p)), None)
        if lose is None:
            return response
        self.paths.discard(lose)
        await response.aread()
        await response.aclose()
        raise httpx.ReadError("the connection dropped before the answer arrived")


def jobs_of(lab: LiveLab, fpga_id: int) -> list[dict[str, str]]:
    """Every job record of a board, straight from Redis."""
    with redis.Redis.from_url(lab.settings.redis_url or "", decode_responses=True) as r:
        keys = [k for k in r.scan_iter("fpgalab:job:*", count=1000) if k.count(":") == 2]
        return [rec for k in keys if (rec := r.hgetall(k)).get("fpga_id") == str(fpga_id)]


def test_a_lost_submit_and_run_make_one_job_each(fake_lab: LiveLab) -> None:
    """A submit and a run whose answers are lost after the lab queued them are sent again
    with the same Idempotency-Key: the lab replays its answers, and the board has one
    build and one run, the run's words read back."""
    network = LoseAnswers("/submit", "/run")
    with client(fake_lab, transport=network) as lab, lab.reserve(3, DESIGN, filename="d.py") as b:
        b.write(0x2000_0000, [7, 8])
        posts = [r for r in network.seen if r.method == "POST"]
        assert [r.url.path for r in posts] == ["/fpga/3/submit"] * 2 + ["/fpga/3/run"] * 2
        for first, again in (posts[0:2], posts[2:4]):
            assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
        assert posts[0].headers["Idempotency-Key"] != posts[2].headers["Idempotency-Key"]
        assert b.read(0x2000_0000, 2) == [7, 8]
    kinds = sorted(job["type"] for job in jobs_of(fake_lab, 3))
    assert kinds == ["build_and_program", "reset", "run", "run"]  # the write, the read


async def test_the_async_client_replays_a_lost_run_too(fake_lab: LiveLab) -> None:
    """The AsyncClient sends a run whose answer was lost again with its key: one job, the
    answer marked replayed."""
    network = AsyncLoseAnswers("/run")
    async with (
        async_client(fake_lab, transport=network) as lab,
        lab.reserve(2, DESIGN, filename="d.py") as board,
    ):
        accepted = await lab.run(2, Write(0x2000_0000, [1]), session_id=board.session_id)
        assert accepted.replayed
    assert sorted(job["type"] for job in jobs_of(fake_lab, 2)) == [
        "build_and_program", "reset", "run",
    ]  # fmt: skip


def test_a_lost_release_is_not_sent_again(fake_lab: LiveLab) -> None:
    """A release (which the lab does not deduplicate) whose answer is lost is raised as a
    TransportError, not sent twice."""
    network = LoseAnswers("/session/release")
    with client(fake_lab, transport=network) as lab:
        board = lab.reserve(1, DESIGN, filename="d.py")
        with pytest.raises(fc.TransportError, match="ReadError"):
            board.release()
    assert [r.url.path for r in network.seen].count("/fpga/1/session/release") == 1


def test_an_unreachable_lab_is_said_at_once() -> None:
    """Nothing listening: TransportError at once (no retry), naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with fc.Client(url) as lab, pytest.raises(fc.TransportError, match=url):
        lab.boards()
    assert time.monotonic() - started < 2


def test_429_is_retried_after_retry_after(
    start_lab: StartLab, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller over its rate limit waits Retry-After and its call goes through; with a
    retry budget smaller than Retry-After the 429 is raised at once."""
    lab = start_lab(api_keys=KEYS, rate_limit=1.0, rate_limit_burst=2)
    caplog.set_level(logging.INFO, "fpgalab.client")
    with (
        client(lab, api_key=ALICE) as alice,
        client(lab, api_key=ALICE, retry_budget=0.5) as hasty,
        alice.reserve(0, DESIGN, filename="d.py") as board,  # a submit: 1 token
    ):
        board.renew()  # the second token
        started = time.monotonic()
        board.renew()  # none left: 429, Retry-After 1, then through
        assert time.monotonic() - started >= 0.5
        assert "429 rate_limited; retrying in 1 s" in caplog.text
        with pytest.raises(fc.RateLimited):
            hasty.renew(0, session_id=board.session_id)
        time.sleep(1.1)  # a token for the release


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, with an AOF (its data survive a restart)."""
    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    yield server
    server.stop()


def test_503_is_retried_until_redis_is_back(
    start_lab: StartLab, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With the lab's Redis stopped for a moment, a board's read gets 503
    redis_unavailable, retries after Retry-After, and returns the words once Redis is
    back."""
    lab = start_lab(redis_url=own_redis.url, boards=[0])
    caplog.set_level(logging.INFO, "fpgalab.client")
    with client(lab) as c, c.reserve(0, DESIGN, filename="d.py") as board:
        board.write(0x2000_0000, [41])
        own_redis.stop()
        back = threading.Timer(1.5, own_redis.start)
        back.start()
        try:
            assert board.read(0x2000_0000) == [41]
        finally:
            back.join()
        assert "503 redis_unavailable; retrying in 1 s" in caplog.text


def test_no_key_in_urls_or_log_lines(keyed_lab: LiveLab, caplog: pytest.LogCaptureFixture) -> None:
    """The API key goes in the X-API-Key header of every request, never in a URL, and in
    no log line of the client or of httpx (at DEBUG), retries included."""
    caplog.set_level(logging.DEBUG)
    network = LoseAnswers("/run")
    with (
        client(keyed_lab, api_key=ALICE, transport=network) as alice,
        alice.reserve(4, DESIGN, filename="d.py") as board,
    ):
        board.read(0x2000_0000)
    assert network.seen and all(r.headers["X-API-Key"] == ALICE for r in network.seen)
    assert not any(ALICE in str(r.url) for r in network.seen)
    assert "sending it again" in caplog.text  # the retry was logged
    assert ALICE not in caplog.text
    assert ALICE not in repr(alice)


def test_a_job_read_is_sent_again_when_its_answer_is_lost(lab_client: fc.Client) -> None:
    """Reads are replayable: a lost answer to a job's status is asked for again."""
    accepted = lab_client.submit(5, DESIGN, filename="d.py")
    lab_client.wait(5, accepted.job_id, timeout=10)
    network = LoseAnswers(f"/jobs/{accepted.job_id}")
    with fc.Client(lab_client.url, transport=network) as lab:
        assert lab.job(5, accepted.job_id).ok
    assert len(network.seen) == 2
