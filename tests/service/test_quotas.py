"""What one caller can hold: a job's log is cut at max_log_bytes, a caller's stored bytes
over a window are held to a budget, and a caller holds at most max_boards_per_caller
boards, however its submits race."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from fpgalab.backends import Build, Design, LogFn
from fpgalab.service import keys
from fpgalab.service.settings import Settings
from fpgalab.service.store import Actor, Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import assert_error, board, reserve, serve, submit, wait_job

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
OPS = {"X-API-Key": "ops-key"}  # admin

LOG_BYTES = 64 * 1024
BUDGET = 50_000
BOARDS = 2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Keys for alice, bob and ops (admin), no rate limit, a 64 KiB log cap, a budget of
    50,000 bytes a day and two boards per caller (the API's and the workers' settings)."""
    return settings.model_copy(
        update={
            "api_keys": "alice=alice-key,bob=bob-key,ops=ops-key:admin",
            "rate_limit": 0.0,
            "max_log_bytes": LOG_BYTES,
            "storage_budget_bytes": BUDGET,
            "max_boards_per_caller": BOARDS,
        }
    )


# -- the log of one job ---------------------------------------------------------------


class Chatty(FakeBackend):
    """A FakeBackend (test double) whose builds print 500 lines of 1,000 characters."""

    def build(self, design: Design, log: LogFn) -> Build:
        for n in range(500):
            log(f"{n:06d} " + "x" * 993)
        return super().build(design, log)


@pytest.fixture
def chatty() -> Iterator[Chatty]:
    fake = Chatty()
    yield fake
    fake.close()


async def test_a_log_is_cut_at_its_byte_limit_keeping_its_last_lines(
    client: httpx.AsyncClient, start_worker: WorkerFactory, chatty: Chatty
) -> None:
    """A build printing 500 KB keeps its first 64 KiB, a line where it was cut, its last
    lines (the lab's own, saying how the job ended, among them) and a final line saying
    how much was dropped."""
    await start_worker(fake=chatty)
    accepted = (await submit(client, 1, headers=ALICE)).json()
    assert (await wait_job(client, 1, accepted["job_id"], headers=ALICE))["status"] == "complete"
    r = await client.get(f"/fpga/1/jobs/{accepted['job_id']}/logs", headers=ALICE)
    lines = r.text.splitlines()
    assert len(r.content) <= LOG_BYTES + 16 * 1024 + 1024, len(r.content)
    assert lines[0].startswith("fpgalab: building design.py")
    cut = next(i for i, line in enumerate(lines) if line.startswith("fpgalab: the log is cut"))
    assert len("\n".join(lines[:cut]).encode()) <= LOG_BYTES
    assert lines[cut - 1].startswith(f"{cut - 2:06d} ")  # whole lines, in order, to the cut
    assert lines[-2] == "fpgalab: board 1 programmed; reserved for this session"
    assert lines[-1].startswith(f"fpgalab: the log was cut at {LOG_BYTES} bytes: ")
    kept = len(lines) - cut - 2  # the last lines, after the cut line, before the final one
    # past the cut: the build's lines the head has not, and the 6 of the lab and the fake
    dropped = 500 - (cut - 1) + 6 - kept
    assert f": {dropped} lines after the cut were dropped" in lines[-1], lines[-1]
    assert f"the {kept} lines above this one are its last" in lines[-1]


# -- the storage budget ---------------------------------------------------------------

#: A write of 2,000 words of 4294967295: a run request of about 22 KB.
BIG_WRITE = {"op": 1, "address": 0, "data": [2**32 - 1] * 2000}


async def stored(store: Store, caller: str) -> int:
    return sum(map(int, await store.redis.hvals(keys.caller_stored(caller))))


async def test_a_caller_past_its_storage_budget_gets_no_new_jobs(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """Once a caller's designs, requests, logs and results of the day reach its budget,
    its new runs and submits are 429 storage_budget_exceeded, naming the budget and when
    it frees up (Retry-After); other callers and admins carry on."""
    await reserve(lab, 1, headers=ALICE)
    accepted = 0
    for _ in range(10):
        r = await lab.post("/fpga/1/run", json=BIG_WRITE, headers=ALICE)
        if r.status_code != 202:
            break
        accepted += 1
        await wait_job(lab, 1, r.json()["job_id"], headers=ALICE)
    assert accepted == 3  # 3 x 22 KB: the third crosses 50,000 bytes
    assert await stored(store, "alice") >= BUDGET
    message = assert_error(r, 429, "storage_budget_exceeded")["message"]
    assert "alice" in message and f"budget of {BUDGET} bytes per 86400 s" in message
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= 86400 and f"in {wait} s" in message
    assert_error(await submit(lab, 2, headers=ALICE), 429, "storage_budget_exceeded")
    assert (await board(lab, 2, headers=ALICE))["state"] == "idle"

    assert (await submit(lab, 3, headers=BOB)).status_code == 202
    await reserve(lab, 4, headers=OPS)
    for _ in range(4):  # an admin is held to no budget
        assert (await lab.post("/fpga/4/run", json=BIG_WRITE, headers=OPS)).status_code == 202


# -- boards per caller ----------------------------------------------------------------


async def test_two_submits_racing_for_a_callers_last_board_one_wins(
    lab: httpx.AsyncClient, app_settings: Settings
) -> None:
    """A caller one board short of max_boards_per_caller sends two submits at once through
    two API replicas: exactly one is accepted, the other is 409 too_many_boards; a release
    makes room again, and an admin is not held to the limit."""
    await reserve(lab, 0, headers=ALICE)
    async with serve(app_settings) as replica:
        answers = await asyncio.gather(
            submit(lab, 1, headers=ALICE), submit(replica, 2, headers=ALICE)
        )
    assert sorted(r.status_code for r in answers) == [202, 409]
    refused = next(r for r in answers if r.status_code == 409)
    message = assert_error(refused, 409, "too_many_boards")["message"]
    assert "alice already holds 2 boards" in message
    boards = (await lab.get("/fpga", headers=ALICE)).json()
    owners = [(b["session"] or {}).get("owner") for b in boards]
    assert owners.count("alice") == BOARDS

    release = await lab.post("/fpga/0/session/release", headers=ALICE)
    await wait_job(lab, 0, release.json()["job_id"], headers=ALICE)
    assert (await submit(lab, 5, headers=ALICE)).status_code == 202
    assert_error(await submit(lab, 6, headers=ALICE), 409, "too_many_boards")

    for fpga_id in (6, 7, 8):
        assert (await submit(lab, fpga_id, headers=OPS)).status_code == 202


async def test_boards_past_the_first_ten_count_toward_the_limit(
    client: httpx.AsyncClient, start_worker: WorkerFactory
) -> None:
    """A caller's boards are counted whatever their ids: one holding boards 12 and 13 of a
    larger lab is at the limit, and a session that ends gives its board back."""
    await start_worker([0, 12, 13])
    await reserve(client, 12, headers=ALICE)
    await reserve(client, 13, headers=ALICE)
    assert_error(await submit(client, 0, headers=ALICE), 409, "too_many_boards")
    release = await client.post("/fpga/13/session/release", headers=ALICE)
    await wait_job(client, 13, release.json()["job_id"], headers=ALICE)
    assert (await submit(client, 0, headers=ALICE)).status_code == 202


async def test_a_callers_count_lives_as_long_as_its_newest_slot(
    store: Store, settings: Settings
) -> None:
    """The stored-bytes hash is given its expiry when a slot of the window begins (the
    window's length plus a slot's); charges to that slot count without renewing it; one
    in the next slot renews it."""
    s = settings.model_copy(update={"storage_budget_window": 24})  # slots of 1 s
    lab = Store.from_url(settings.redis_url or "", s)
    k = keys.caller_stored("alice")
    try:
        start = await lab.redis.time()
        job = await lab.submit(0, Actor("alice"), "d.py", "x" * 100, "sha")
        assert 0 < await lab.redis.ttl(k) <= 25
        await lab.redis.expire(k, 100)  # marked: a later charge in this slot keeps it
        await lab.append_logs(job["job_id"], ["a line"])
        if (await lab.redis.time())[0] == start[0]:  # still the same slot (second)
            assert await lab.redis.ttl(k) > 25
        await asyncio.sleep(1.1)
        await lab.append_logs(job["job_id"], ["another"])
        assert 0 < await lab.redis.ttl(k) <= 25
        assert await stored(lab, "alice") == 100 + len("a line") + len("another")
    finally:
        await lab.close()
