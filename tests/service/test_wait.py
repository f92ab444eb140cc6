"""Waiting for a job without polling: ``GET /fpga/{id}/jobs/{job_id}?wait=S`` answers once
the job has finished (woken by the event its finishing script publishes), or after S
seconds with the job as it is, for many waiters at once on one Redis subscription."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio

from fpgalab.service import keys
from fpgalab.service.app import create_app
from fpgalab.service.settings import Settings
from fpgalab.service.waiters import MAX_WAIT, JobWaiters
from tests.conftest import WorkerFactory
from tests.fakes import FakeBackend
from tests.helpers import assert_error, reserve, serve, wait_for, wait_set

READ = {"op": 2, "address": 0}
#: The API's Redis connections: far fewer than the requests that wait at once.
API_CONNECTIONS = 16


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"redis_max_connections": API_CONNECTIONS})


async def held_run(lab: httpx.AsyncClient, backend: FakeBackend, fpga_id: int = 0) -> str:
    """A run job the worker has taken and holds in ``transact`` until ``backend.resume``."""
    backend.hold.add("transact")
    r = await lab.post(f"/fpga/{fpga_id}/run", json=READ)
    assert r.status_code == 202, r.text
    await wait_set(backend.held)
    return str(r.json()["job_id"])


async def timed_get(
    client: httpx.AsyncClient, path: str, **kw: Any
) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    r = await client.get(path, **kw)
    return time.monotonic() - started, r


async def test_wait_returns_once_the_job_finishes(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A waiting GET answers with the finished job soon after it finishes, long before its
    wait is up, and it was still waiting while the job ran."""
    await reserve(lab, 0)
    job_id = await held_run(lab, backend)
    waiting = asyncio.create_task(timed_get(lab, f"/fpga/0/jobs/{job_id}", params={"wait": 20}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    backend.resume.set()
    took, r = await waiting
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "complete" and r.json()["job_id"] == job_id
    assert took < 20


async def test_wait_answers_the_unfinished_job_at_its_deadline(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A job that does not finish within the wait is answered as it is then: running."""
    await reserve(lab, 0)
    job_id = await held_run(lab, backend)
    took, r = await timed_get(lab, f"/fpga/0/jobs/{job_id}", params={"wait": 0.5})
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert took >= 0.5
    backend.resume.set()


async def test_wait_on_a_finished_job_answers_at_once(lab: httpx.AsyncClient) -> None:
    """A job already finished is answered without waiting, the same body as a plain GET."""
    accepted = await reserve(lab, 0)
    path = f"/fpga/0/jobs/{accepted['job_id']}"
    took, r = await timed_get(lab, path, params={"wait": 30})
    assert r.status_code == 200 and took < 30
    assert r.json() == (await lab.get(path)).json()


async def test_wait_ends_with_a_cancel(lab: httpx.AsyncClient, backend: FakeBackend) -> None:
    """A waiter on a queued job is woken by its cancel, and answers it cancelled."""
    await reserve(lab, 0)
    await held_run(lab, backend)  # the worker is busy: the next run stays queued
    queued = (await lab.post("/fpga/0/run", json=READ)).json()["job_id"]
    path = f"/fpga/0/jobs/{queued}"
    waiting = asyncio.create_task(timed_get(lab, path, params={"wait": 20}))
    await asyncio.sleep(0.2)
    assert (await lab.delete(path)).status_code == 204
    took, r = await waiting
    assert r.json()["status"] == "cancelled" and took < 20
    backend.resume.set()


@pytest.mark.parametrize(
    ("wait", "says"),
    [
        ("0", "greater than 0"),
        ("-1", "greater than 0"),
        ("30.5", f"less than or equal to {MAX_WAIT:g}"),
        ("3600", f"less than or equal to {MAX_WAIT:g}"),
        ("abc", "valid number"),
        ("nan", "finite number"),
        ("inf", "finite number"),
    ],
)
async def test_a_wait_out_of_bounds_is_refused(
    lab: httpx.AsyncClient, wait: str, says: str
) -> None:
    """A wait that is not a number of seconds over 0 and at most 30 is 422 naming the
    parameter and its bound."""
    accepted = await reserve(lab, 0)
    r = await lab.get(f"/fpga/0/jobs/{accepted['job_id']}", params={"wait": wait})
    message = assert_error(r, 422, "validation_error")["message"]
    assert message.startswith("query.wait: ") and says in message, message


async def test_wait_on_an_unknown_job_is_404_at_once(lab: httpx.AsyncClient) -> None:
    """A job that does not exist (or is another board's) is 404 job_not_found, unwaited."""
    accepted = await reserve(lab, 0)
    for path in ("/fpga/0/jobs/nosuchjob", f"/fpga/1/jobs/{accepted['job_id']}"):
        took, r = await timed_get(lab, path, params={"wait": 30})
        assert_error(r, 404, "job_not_found")
        assert took < 30


async def test_a_finish_between_the_read_and_the_wait_is_not_missed(
    settings: Settings, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """A job that finishes after the route read it unfinished, before it began to wait,
    still ends the wait at once: the waiter was registered before the read."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lab") as lab:
            await start_worker([0])
            await reserve(lab, 0)
            job_id = await held_run(lab, backend)
            store = app.state.store
            read = store.job

            async def read_then_finish(wanted: str) -> dict[str, str]:
                record = await read(wanted)
                if record.get("status") == "running":  # the route's first read
                    backend.resume.set()

                    async def finished() -> bool:
                        return await store.job_fields(job_id, "status") == ["complete"]

                    await wait_for(finished)
                return record  # type: ignore[no-any-return]

            store.job = read_then_finish
            took, r = await timed_get(lab, f"/fpga/0/jobs/{job_id}", params={"wait": 20})
            store.job = read
    assert r.json()["status"] == "complete"
    assert took < 20


async def test_two_hundred_waiters_share_one_subscription(
    lab: httpx.AsyncClient, backend: FakeBackend, redis_url: str
) -> None:
    """200 concurrent waiters (on one job and on 20 others) are all answered with their
    finished job, without an error, by an API of 16 Redis connections: a waiting request
    holds none (Redis sees no more clients than the API's bound and the worker's)."""
    await reserve(lab, 0)
    first = await held_run(lab, backend)
    queued = [(await lab.post("/fpga/0/run", json=READ)).json()["job_id"] for _ in range(20)]
    targets = [first] * 100 + queued * 5
    waiting = [
        asyncio.create_task(lab.get(f"/fpga/0/jobs/{j}", params={"wait": 25})) for j in targets
    ]
    await asyncio.sleep(1.0)
    assert not any(task.done() for task in waiting)
    async with redis.asyncio.Redis.from_url(redis_url) as r:
        clients = (await r.info("clients"))["connected_clients"]
    assert clients < API_CONNECTIONS + 20, clients
    backend.resume.set()
    answers = await asyncio.gather(*waiting)
    assert [a.status_code for a in answers] == [200] * len(targets)
    assert [a.json()["job_id"] for a in answers] == targets
    assert {a.json()["status"] for a in answers} == {"complete"}


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as r:
        yield r


async def subscribed(r: redis.asyncio.Redis) -> bool:
    [(_, count)] = await r.pubsub_numsub(keys.EVENTS)
    return bool(count)


async def test_the_subscription_comes_back_after_redis_cuts_it(
    lab: httpx.AsyncClient, backend: FakeBackend, redis_client: redis.asyncio.Redis
) -> None:
    """Redis dropping the API's event subscription (CLIENT KILL) does not leave later
    waiters to their deadline: the API subscribes again and they are woken as before."""
    await reserve(lab, 0)
    await wait_for(lambda: subscribed(redis_client))
    assert await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
    await wait_for(lambda: subscribed(redis_client))
    job_id = await held_run(lab, backend)
    waiting = asyncio.create_task(timed_get(lab, f"/fpga/0/jobs/{job_id}", params={"wait": 20}))
    await asyncio.sleep(0.2)
    backend.resume.set()
    took, r = await waiting
    assert r.json()["status"] == "complete" and took < 20


async def test_waiters_are_woken_when_the_subscription_is_back(
    redis_client: redis.asyncio.Redis,
) -> None:
    """A finish published while the subscription was down is not replayed, so every
    waiter is woken (to read its job again) once it is back; while it is up, only the
    finish of a waiter's own job wakes it."""
    waiters = JobWaiters(redis_client)
    with waiters.watch("j1") as woken:
        try:
            waiters.start()
            await asyncio.wait_for(woken.wait(), 5)  # subscribed: woken to read its job
            woken.clear()
            for job_id, status in (("j1", "running"), ("j2", "complete")):
                await redis_client.publish(keys.EVENTS, event(job_id, status))
            await asyncio.sleep(0.3)
            assert not woken.is_set()
            await waiters.close()  # the subscription is down (close wakes every waiter too)
            woken.clear()
            await redis_client.publish(keys.EVENTS, event("j1", "complete"))
            await asyncio.sleep(0.3)
            assert not woken.is_set()  # nobody heard it
            waiters.start()
            await asyncio.wait_for(woken.wait(), 5)
        finally:
            await waiters.close()


def event(job_id: str, status: str) -> str:
    return json.dumps({"kind": "job", "job_id": job_id, "fpga_id": 0, "status": status})


# The result, waited for: a run's POST then one GET (the client's read) -------------------


async def test_a_waited_result_answers_once_the_run_finishes(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """``GET …/result?wait=`` holds the answer until the run has finished, then answers its
    result, the same body as a plain GET."""
    await reserve(lab, 0)
    job_id = await held_run(lab, backend)
    path = f"/fpga/0/jobs/{job_id}/result"
    waiting = asyncio.create_task(timed_get(lab, path, params={"wait": 20}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    backend.resume.set()
    took, r = await waiting
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "data": [0], "error": None}
    assert r.json() == (await lab.get(path)).json() and took < 20


async def test_a_waited_result_past_its_deadline_is_not_complete(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A run still going at the end of the wait: ``409 job_not_complete``, as unwaited."""
    await reserve(lab, 0)
    job_id = await held_run(lab, backend)
    took, r = await timed_get(lab, f"/fpga/0/jobs/{job_id}/result", params={"wait": 0.5})
    assert_error(r, 409, "job_not_complete")
    assert took >= 0.5
    backend.resume.set()


async def test_a_waited_result_of_a_cancelled_run_is_not_complete(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A queued run cancelled while its result is waited for: the wait ends at the cancel
    with ``409 job_not_complete`` (a cancelled run has no result)."""
    await reserve(lab, 0)
    await held_run(lab, backend)
    queued = (await lab.post("/fpga/0/run", json=READ)).json()["job_id"]
    path = f"/fpga/0/jobs/{queued}/result"
    waiting = asyncio.create_task(timed_get(lab, path, params={"wait": 20}))
    await asyncio.sleep(0.2)
    assert (await lab.delete(f"/fpga/0/jobs/{queued}")).status_code == 204
    took, r = await waiting
    assert "cancelled" in assert_error(r, 409, "job_not_complete")["message"] and took < 20
    backend.resume.set()


async def test_a_result_another_caller_waits_for_is_refused_at_once(
    settings: Settings, start_worker: WorkerFactory, backend: FakeBackend
) -> None:
    """Someone else's run: 403 not_session_owner at once, not after the wait; a bad wait
    is 422 as on the job."""
    keyed = settings.model_copy(update={"api_keys": "alice=alice-key,bob=bob-key"})
    async with serve(keyed) as c:
        await start_worker()
        alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}
        await reserve(c, 0, headers=alice)
        backend.hold.add("transact")
        r = await c.post("/fpga/0/run", json=READ, headers=alice)
        path = f"/fpga/0/jobs/{r.json()['job_id']}/result"
        took, r = await timed_get(c, path, params={"wait": 20}, headers=bob)
        assert_error(r, 403, "not_session_owner")
        assert took < 20
        r = await c.get(path, params={"wait": 31}, headers=alice)
        assert assert_error(r, 422, "validation_error")["message"].startswith("query.wait: ")
        backend.resume.set()


# A run answered once done: its POST with ?wait= (one request for a read) ----------------


async def test_a_waited_run_answers_with_its_result(lab: httpx.AsyncClient) -> None:
    """``POST …/run?wait=`` answers 202 once the run has finished: the accepted body, the
    job's final ``status`` and its ``result`` as ``GET …/result`` serves it."""
    await reserve(lab, 0)
    write = {"op": 1, "address": 0x100, "data": [7, 9]}
    r = await lab.post("/fpga/0/run", json=write, params={"wait": 20})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "complete" and r.json()["result"]["ok"] is True
    r = await lab.post("/fpga/0/run", json={"op": 2, "address": 0x100, "length": 2},
                       params={"wait": 20})  # fmt: skip
    body = r.json()
    assert r.status_code == 202 and body["status"] == "complete", r.text
    assert body["result"] == {"ok": True, "data": [7, 9], "error": None}
    stored = await lab.get(f"/fpga/0/jobs/{body['job_id']}/result")
    assert stored.json() == body["result"]
    assert set(body) == {"job_id", "fpga_id", "status", "session_id", "expires_at",
                         "replayed", "result"}  # fmt: skip


async def test_a_waited_run_that_fails_answers_its_failure(lab: httpx.AsyncClient) -> None:
    """A bus error: ``status`` failed, and the result says where (an ``ops`` list: which)."""
    await reserve(lab, 0)
    ops = {"ops": [{"op": 1, "address": 0x100, "data": [1]}, {"op": 2, "address": 0xF000_0000}]}
    r = await lab.post("/fpga/0/run", json=ops, params={"wait": 20})
    body = r.json()
    assert r.status_code == 202 and body["status"] == "failed", r.text
    assert body["result"]["ok"] is False and body["result"]["error"].startswith("op 2 of 2: ")
    assert [e["ok"] for e in body["result"]["results"]] == [True, False]


async def test_a_waited_run_still_going_answers_without_a_result(
    lab: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """At the wait's end a run still going is answered as it is (``running``), with no
    ``result`` key; the result is then read as usual."""
    await reserve(lab, 0)
    backend.hold.add("transact")
    started = time.monotonic()
    r = await lab.post("/fpga/0/run", json=READ, params={"wait": 0.5})
    assert r.status_code == 202 and time.monotonic() - started >= 0.5
    assert r.json()["status"] == "running" and "result" not in r.json(), r.text
    backend.resume.set()
    done = await lab.get(f"/fpga/0/jobs/{r.json()['job_id']}/result", params={"wait": 20})
    assert done.json()["ok"] is True


async def test_a_waited_run_replayed_answers_the_same_job(lab: httpx.AsyncClient) -> None:
    """A retry with the same Idempotency-Key (its answer was lost) makes no second job:
    the replay waits for the first and answers its result."""
    await reserve(lab, 0)
    headers = {"Idempotency-Key": "read-once"}
    first = await lab.post("/fpga/0/run", json=READ, params={"wait": 20}, headers=headers)
    again = await lab.post("/fpga/0/run", json=READ, params={"wait": 20}, headers=headers)
    assert again.json()["replayed"] is True
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["result"] == first.json()["result"]
