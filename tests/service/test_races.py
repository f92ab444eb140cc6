"""Races: concurrent requests on one board, cancel against the worker's take,
reset against release, run ordering, and Idempotency-Key retries."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from fpgalab.backends import Op, Transaction, TransactResult
from fpgalab.service import keys
from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import (
    assert_error,
    board,
    job,
    jobs_in_redis,
    reserve,
    serve,
    submit,
    wait_job,
    wait_state,
)

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}


@pytest.fixture
async def keyed(
    settings: Settings, start_worker: WorkerFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with keys for alice and bob, and a worker serving every board."""
    async with serve(settings.model_copy(update={"api_keys": "alice=alice-key,bob=bob-key"})) as c:
        await start_worker()
        yield c


async def test_twenty_concurrent_submits_one_wins(lab: httpx.AsyncClient, store: Store) -> None:
    """Twenty submits at once to one idle board: one 202, nineteen 409 fpga_not_idle, one job."""
    replies = await asyncio.gather(*(submit(lab, 3, f"# design {i}\n") for i in range(20)))
    codes = Counter(r.status_code for r in replies)
    assert codes == {202: 1, 409: 19}, codes
    for r in replies:
        if r.status_code == 409:
            assert_error(r, 409, "fpga_not_idle")
    [winner] = [r.json() for r in replies if r.status_code == 202]
    records = await jobs_in_redis(store)
    assert [r["job_id"] for r in records] == [winner["job_id"]]
    done = await wait_job(lab, 3, winner["job_id"])
    assert done["status"] == "complete"
    b = await board(lab, 3)
    assert b["state"] == "reserved" and b["session"]["session_id"] == winner["session_id"]


async def test_concurrent_submits_to_ten_boards_all_succeed(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """One submit to each of the ten boards at once: ten 202s, ten jobs, ten reserved boards."""
    replies = await asyncio.gather(*(submit(lab, i) for i in range(10)))
    assert [r.status_code for r in replies] == [202] * 10, [r.text for r in replies]
    assert [r.json()["fpga_id"] for r in replies] == list(range(10))
    assert len({r.json()["job_id"] for r in replies}) == 10
    assert len(await jobs_in_redis(store)) == 10
    for i, r in enumerate(replies):
        assert (await wait_job(lab, i, r.json()["job_id"]))["status"] == "complete"
        assert (await board(lab, i))["state"] == "reserved"


async def test_cancel_racing_the_worker_never_both(
    client: httpx.AsyncClient, start_worker: WorkerFactory, backend: FakeBackend, store: Store
) -> None:
    """A cancel sent right after a submit either wins (job cancelled, board idle, nothing
    built) or loses with 409 (the job runs to the end); never both, never a stuck board."""
    worker = await start_worker([5])
    take = worker.store.take
    delays = random.Random(5)

    async def take_a_moment_later(*args: Any, **kw: Any) -> Any:
        # the worker has read the entry; vary when it takes the job, so that
        # the cancel lands before or after the take
        await asyncio.sleep(delays.choice([0, 0, 0.0005, 0.001, 0.002, 0.005, 0.02]))
        return await take(*args, **kw)

    worker.store.take = take_a_moment_later
    outcomes: Counter[int] = Counter()
    cancelled: list[tuple[str, str]] = []
    for i in range(40):
        name = f"round{i}.py"
        r = await submit(client, 5, filename=name)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        # vary when the cancel is sent too: API and worker share this event loop, so
        # without a pause here the cancel always reaches Redis first
        await asyncio.sleep(delays.choice([0, 0, 0.001, 0.003, 0.01]))
        d = await client.delete(f"/fpga/5/jobs/{job_id}")
        outcomes[d.status_code] += 1
        if d.status_code == 204:
            record = await job(client, 5, job_id)
            assert record["status"] == "cancelled" and record.get("started_at") is None
            b = await board(client, 5)
            assert b["state"] == "idle" and b["session"] is None
            cancelled.append((job_id, name))
        else:
            assert_error(d, 409, "job_not_cancellable")
            done = await wait_job(client, 5, job_id)
            assert done["status"] == "complete", done
            assert (await board(client, 5))["state"] == "reserved"
            assert ("build", name) in backend.calls
            reset = await client.post("/fpga/5/reset")
            assert (await wait_job(client, 5, reset.json()["job_id"]))["status"] == "complete"
        b = await wait_state(client, 5, "idle")
        assert b["current_job_id"] is None
    # a cancelled job stays cancelled: the worker never built one afterwards
    for job_id, name in cancelled:
        assert (await job(client, 5, job_id))["status"] == "cancelled"
        assert ("build", name) not in backend.calls
    # and nothing is left in the board's queue, read or unread
    assert await store.redis.xlen(keys.queue(5)) == 0
    assert (await store.redis.xpending(keys.queue(5), keys.GROUP))["pending"] == 0
    assert await store.redis.scard(keys.queued(5)) == 0
    assert sum(outcomes.values()) == 40 and set(outcomes) <= {204, 409}
    # both sides of the race were run (a zero delay lets the worker win)
    assert outcomes[204] and outcomes[409], outcomes


async def test_concurrent_reset_and_release_one_wins(lab: httpx.AsyncClient, store: Store) -> None:
    """Reset and release sent together on a reserved board: exactly one 202 and one reset job."""
    for _ in range(5):
        await reserve(lab, 2)
        reset, release = await asyncio.gather(
            lab.post("/fpga/2/reset"), lab.post("/fpga/2/session/release")
        )
        codes = sorted([reset.status_code, release.status_code])
        assert codes[0] == 202 and codes[1] != 202, (reset.text, release.text)
        if reset.status_code == 202:
            assert_error(release, 404, "no_active_session")
            winner = reset.json()
        else:
            assert_error(reset, 409, "fpga_not_resettable")
            winner = release.json()
        resets = [r for r in await jobs_in_redis(store, 2) if r["type"] == "reset"]
        assert sum(r["job_id"] == winner["job_id"] for r in resets) == 1
        assert sum(r["status"] != "complete" for r in resets) <= 1
        assert (await wait_job(lab, 2, winner["job_id"]))["status"] == "complete"
        await wait_state(lab, 2, "idle")
    resets = [r for r in await jobs_in_redis(store, 2) if r["type"] == "reset"]
    assert len(resets) == 5


class RecordingBackend(FakeBackend):
    """The FakeBackend, recording the writes it runs and taking a varying time over each."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[int] = []
        self._delays = random.Random(6)

    def transact(self, board: int, txn: Transaction) -> TransactResult:
        time.sleep(self._delays.choice([0, 0.001, 0.003]))
        if txn.op is Op.WRITE:
            self.written.extend(txn.data)
        return super().transact(board, txn)


async def test_runs_posted_back_to_back_execute_in_order(
    client: httpx.AsyncClient, start_worker: WorkerFactory
) -> None:
    """Writes to one address queued back to back run in order: the final read sees the last."""
    fake = RecordingBackend()
    try:
        await start_worker([6], fake=fake)
        await reserve(client, 6)
        ids = []
        for value in range(25):
            body = {"op": 1, "address": 0x40, "data": [value]}
            r = await client.post("/fpga/6/run", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
        r = await client.post("/fpga/6/run", json={"op": 2, "address": 0x40})
        read_id = r.json()["job_id"]
        assert (await wait_job(client, 6, read_id))["status"] == "complete"
        result = (await client.get(f"/fpga/6/jobs/{read_id}/result")).json()
        assert result["data"] == [24]
        assert fake.written == list(range(25))
        records = [await job(client, 6, i) for i in [*ids, read_id]]
        assert all(r["status"] == "complete" for r in records)
        for earlier, later in itertools.pairwise(records):
            finished = datetime.fromisoformat(earlier["finished_at"])
            assert finished <= datetime.fromisoformat(later["started_at"]), (earlier, later)
    finally:
        fake.close()


async def test_idempotent_submit_replays_the_first_answer(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """A submit retried with one Idempotency-Key returns the same job, replayed, queued once."""
    headers = {"Idempotency-Key": "ci-build-17"}
    first = await submit(lab, 4, headers=headers)
    assert first.status_code == 202 and first.json()["replayed"] is False
    await wait_job(lab, 4, first.json()["job_id"])
    retry = await submit(lab, 4, headers=headers)
    assert retry.status_code == 202, retry.text
    assert retry.json()["job_id"] == first.json()["job_id"]
    assert retry.json()["session_id"] == first.json()["session_id"]
    assert retry.json()["replayed"] is True
    assert len(await jobs_in_redis(store, 4)) == 1
    assert (await board(lab, 4))["state"] == "reserved"
    # without the key the same request is refused: the board is taken
    assert_error(await submit(lab, 4), 409, "fpga_not_idle")


async def test_idempotent_run_replays_the_first_answer(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """A run retried with the same Idempotency-Key returns the same job and queues nothing."""
    await reserve(lab, 7)
    body = {"op": 1, "address": 0, "data": [1, 2]}
    headers = {"Idempotency-Key": "write-1"}
    first = await lab.post("/fpga/7/run", json=body, headers=headers)
    assert first.status_code == 202 and first.json()["replayed"] is False
    retry = await lab.post("/fpga/7/run", json=body, headers=headers)
    assert retry.status_code == 202
    assert retry.json()["job_id"] == first.json()["job_id"] and retry.json()["replayed"] is True
    runs = [r for r in await jobs_in_redis(store, 7) if r["type"] == "run"]
    assert [r["job_id"] for r in runs] == [first.json()["job_id"]]


async def test_idempotency_key_reused_for_another_request(lab: httpx.AsyncClient) -> None:
    """The same key with a different body is 422 idempotency_key_reused, on submit and run."""
    headers = {"Idempotency-Key": "k1"}
    assert (await submit(lab, 1, "# one\n", headers=headers)).status_code == 202
    assert_error(await submit(lab, 1, "# two\n", headers=headers), 422, "idempotency_key_reused")
    assert_error(await submit(lab, 2, "# one\n", headers=headers), 422, "idempotency_key_reused")
    assert (await board(lab, 2))["state"] == "idle"

    await reserve(lab, 3)
    run = {"op": 1, "address": 0, "data": [1]}
    run_headers = {"Idempotency-Key": "r1"}
    assert (await lab.post("/fpga/3/run", json=run, headers=run_headers)).status_code == 202
    other = {"op": 1, "address": 0, "data": [2]}
    r = await lab.post("/fpga/3/run", json=other, headers=run_headers)
    assert_error(r, 422, "idempotency_key_reused")
    # a key used for a submit is not a key for a run
    assert_error(
        await lab.post("/fpga/3/run", json=run, headers=headers), 422, "idempotency_key_reused"
    )


async def test_idempotency_keys_are_per_caller(keyed: httpx.AsyncClient, store: Store) -> None:
    """The same Idempotency-Key from another caller is independent: never a replay of the first."""
    key = {"Idempotency-Key": "shared"}
    first = await submit(keyed, 1, headers={**ALICE, **key})
    assert first.status_code == 202, first.text
    # bob's identical request is his own: the board is alice's, so it is refused
    assert_error(await submit(keyed, 1, headers={**BOB, **key}), 409, "fpga_not_idle")
    # and the key is free for bob to use on another board
    bobs = await submit(keyed, 2, headers={**BOB, **key})
    assert bobs.status_code == 202 and bobs.json()["replayed"] is False
    assert bobs.json()["job_id"] != first.json()["job_id"]
    # alice's retry still replays hers
    again = await submit(keyed, 1, headers={**ALICE, **key})
    assert again.json()["job_id"] == first.json()["job_id"] and again.json()["replayed"] is True

    await wait_job(keyed, 1, first.json()["job_id"], headers=ALICE)
    await wait_job(keyed, 2, bobs.json()["job_id"], headers=BOB)
    run = {"op": 2, "address": 0}
    rk = {"Idempotency-Key": "read"}
    a = await keyed.post("/fpga/1/run", json=run, headers={**ALICE, **rk})
    b = await keyed.post("/fpga/2/run", json=run, headers={**BOB, **rk})
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert a.json()["job_id"] != b.json()["job_id"]
    assert a.json()["replayed"] is False and b.json()["replayed"] is False
    owners = Counter(r["owner"] for r in await jobs_in_redis(store))
    assert owners == {"alice": 2, "bob": 2}


async def test_concurrent_retries_with_one_key_make_one_job(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """Ten concurrent submits and ten concurrent runs, each with one key, queue one job each."""
    headers = {"Idempotency-Key": "burst"}
    replies = await asyncio.gather(*(submit(lab, 8, headers=headers) for _ in range(10)))
    assert [r.status_code for r in replies] == [202] * 10, [r.text for r in replies]
    assert len({r.json()["job_id"] for r in replies}) == 1
    assert sorted(r.json()["replayed"] for r in replies) == [False] + [True] * 9
    assert len(await jobs_in_redis(store, 8)) == 1
    await wait_job(lab, 8, replies[0].json()["job_id"])

    run_headers = {"Idempotency-Key": "burst-run"}
    body = {"op": 1, "address": 4, "data": [9]}
    runs = await asyncio.gather(
        *(lab.post("/fpga/8/run", json=body, headers=run_headers) for _ in range(10))
    )
    assert [r.status_code for r in runs] == [202] * 10, [r.text for r in runs]
    assert len({r.json()["job_id"] for r in runs}) == 1
    assert sorted(r.json()["replayed"] for r in runs) == [False] + [True] * 9
    assert len([r for r in await jobs_in_redis(store, 8) if r["type"] == "run"]) == 1


async def test_an_idempotency_key_covers_the_file_name(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """The same bytes under another file name (x.v is Verilog, x.py Python) are another
    request: with the same Idempotency-Key, 422 idempotency_key_reused and nothing queued;
    the same name replays the first answer."""
    headers = {"Idempotency-Key": "same-bytes"}
    source = "module user_design; endmodule\n"
    first = await submit(lab, 4, source, filename="x.v", headers=headers)
    assert first.status_code == 202, first.text
    for other in ("x.py", "y.v", "X.V"):
        r = await submit(lab, 4, source, filename=other, headers=headers)
        assert_error(r, 422, "idempotency_key_reused")
    again = await submit(lab, 4, source, filename="x.v", headers=headers)
    assert again.status_code == 202 and again.json()["replayed"] is True
    assert again.json()["job_id"] == first.json()["job_id"]
    [record] = await jobs_in_redis(store, 4)
    assert record["filename"] == "x.v"


async def test_an_idempotent_run_covers_the_session_it_names(
    lab: httpx.AsyncClient, store: Store
) -> None:
    """A run's X-Session-ID is part of the request: a retry that names another session (or
    none) is 422 idempotency_key_reused; the same one replays."""
    sid = (await reserve(lab, 7))["session_id"]
    body = {"op": 2, "address": 0}
    named = {"Idempotency-Key": "read-0", "X-Session-ID": sid}
    first = await lab.post("/fpga/7/run", json=body, headers=named)
    assert first.status_code == 202, first.text
    r = await lab.post("/fpga/7/run", json=body, headers={"Idempotency-Key": "read-0"})
    assert_error(r, 422, "idempotency_key_reused")
    again = await lab.post("/fpga/7/run", json=body, headers=named)
    assert again.json()["job_id"] == first.json()["job_id"] and again.json()["replayed"] is True
    assert len([j for j in await jobs_in_redis(store, 7) if j["type"] == "run"]) == 1
